from diffattr.featurize import featurize_shard
from diffattr.jobs import device, job

with job(snakemake):
    start, stop = snakemake.params.rows
    featurize_shard(snakemake.input.model, snakemake.input.images, snakemake.wildcards.split, start, stop,
                    snakemake.params.spec, snakemake.params.model, snakemake.output.shard, device())
