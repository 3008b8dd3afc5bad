from diffattr.data.prepare import prepare
from diffattr.jobs import job

with job(snakemake):
    prepare(snakemake.params.data, snakemake.output.store, snakemake.output.table)
