from diffattr.jobs import job
from diffattr.methods.retraining import retraining_curve

with job(snakemake):
    i = snakemake.input
    retraining_curve(i.masks, i.truth, i.eval_masks, i.eval_truth, snakemake.params.method, snakemake.params.sets, snakemake.output.table, snakemake.params.lds)
