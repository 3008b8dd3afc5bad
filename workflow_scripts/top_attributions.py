from diffattr.attribute import top_attributions
from diffattr.jobs import job

with job(snakemake):
    i = snakemake.input
    top_attributions(i.scores, i.metadata, i.queries or None, snakemake.params.top, snakemake.output.csv,
                     snakemake.output.parquet)
