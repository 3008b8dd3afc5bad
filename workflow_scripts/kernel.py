from diffattr.jobs import job
from diffattr.kernel import build_kernel

with job(snakemake):
    build_kernel(snakemake.params.form, snakemake.output.kernel,
                 partials=list(snakemake.input.get("partials", [])), train_path=snakemake.input.get("train"))
