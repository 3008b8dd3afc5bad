from diffattr.evaluate.table import assemble
from diffattr.jobs import job

with job(snakemake):
    assemble(list(snakemake.input.tables), snakemake.input.reliability, snakemake.output.csv, snakemake.output.markdown)
