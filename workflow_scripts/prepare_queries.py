from diffattr.attribute import prepare_queries
from diffattr.jobs import job

with job(snakemake):
    prepare_queries(snakemake.input.folder, snakemake.params.channels, snakemake.output.store, snakemake.output.table)
