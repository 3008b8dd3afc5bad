from diffattr.evaluate.table import assemble
from diffattr.jobs import job

with job(snakemake):
    oracle = dict(zip(snakemake.params.oracle_methods, snakemake.input.oracle))
    assemble(list(snakemake.input.tables), snakemake.input.reliability, oracle, snakemake.output.csv,
             snakemake.output.markdown)
