from diffattr.jobs import job
from diffattr.kernel import write_partial

with job(snakemake):
    start, stop = snakemake.params.rows
    write_partial(snakemake.input.shard, snakemake.params.spec_hash, start, stop, snakemake.params.n_train,
                  snakemake.output.gram)
