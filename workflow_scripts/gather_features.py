from diffattr.jobs import job
from diffattr.store import gather_features

with job(snakemake):
    gather_features(list(snakemake.input.shards), [tuple(r) for r in snakemake.params.ranges],
                    snakemake.params.spec_hash, snakemake.output.features)
