from diffattr.attribute import import_model
from diffattr.jobs import job

with job(snakemake):
    import_model(snakemake.input.model, snakemake.input.lora or None, snakemake.params.model, snakemake.output.checkpoint)
