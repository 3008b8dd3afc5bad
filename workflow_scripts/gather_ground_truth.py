from diffattr.ground_truth import gather_pool
from diffattr.jobs import job

with job(snakemake):
    paths = {tuple(key): path for key, path in zip(snakemake.params.models, snakemake.params.measurements)}
    gather_pool(paths, snakemake.params.sets, snakemake.output.truth, snakemake.output.reliability)
