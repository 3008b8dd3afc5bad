from diffattr.jobs import job
from diffattr.methods.registry import score_method

with job(snakemake):
    inputs = {name: str(path) for name, path in snakemake.input.items()}
    score_method(snakemake.params.method, inputs, snakemake.wildcards.set, snakemake.output.scores)
