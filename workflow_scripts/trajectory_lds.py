from diffattr.evaluate.table import evaluate_steps
from diffattr.jobs import job

with job(snakemake):
    evaluate_steps(snakemake.input.scores, snakemake.input.masks, snakemake.input.truth, snakemake.params.lds,
                   snakemake.output.table)
