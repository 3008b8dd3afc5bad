from diffattr.jobs import job
from diffattr.methods.registry import MethodInputs, load_plugins
from diffattr.methods.trak import trajectory_scores

with job(snakemake):
    load_plugins(snakemake.config.get("plugins") or [])
    inputs = MethodInputs.of(dict(snakemake.input.items()))
    trajectory_scores(inputs, snakemake.params.method, snakemake.output.scores)
