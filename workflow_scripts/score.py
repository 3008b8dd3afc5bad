from diffattr.jobs import job
from diffattr.methods.registry import MethodInputs, load_plugins, score_method

with job(snakemake):
    load_plugins(snakemake.config.get("plugins") or [])
    inputs = MethodInputs.of(dict(snakemake.input.items()))
    score_method(snakemake.params.method, inputs, snakemake.wildcards.set, snakemake.output.scores)
