from diffattr.jobs import job
from diffattr.methods.trak import trajectory_scores

with job(snakemake):
    inputs = {name: str(path) for name, path in snakemake.input.items()}
    trajectory_scores(inputs, snakemake.params.method, snakemake.output.scores)
