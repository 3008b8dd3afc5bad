from diffattr.jobs import job
from diffattr.pretrain import pretrain_job

with job(snakemake):
    pretrain_job(snakemake.input.data, snakemake.params.cfg, snakemake.output.pipeline, snakemake.output.log_table)
