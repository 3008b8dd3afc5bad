from diffattr.jobs import job
from diffattr.subsets import write_pool

with job(snakemake):
    write_pool(snakemake.input.data, snakemake.params.pool, snakemake.output.masks)
