from diffattr.customization import evaluate_customization
from diffattr.jobs import device, job

with job(snakemake):
    evaluate_customization(snakemake.input.data, list(snakemake.input.images), snakemake.params.cfg,
                           snakemake.output.table, snakemake.output.summary, device())
