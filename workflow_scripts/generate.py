from diffattr.jobs import device, job
from diffattr.sample import generate_set

with job(snakemake):
    generate_set(snakemake.input.model, snakemake.params.cfg, snakemake.output.store, snakemake.output.table, device())
