from diffattr.choose import SelectSettings
from diffattr.jobs import device, job
from diffattr.methods.trak import select_lambda

with job(snakemake):
    pools = {p: (m, t) for p, m, t in zip(snakemake.params.pools, snakemake.input.masks, snakemake.input.truths)}
    residual = snakemake.input.residuals[0] if snakemake.input.residuals else None
    select_lambda(snakemake.input.kernel, snakemake.input.train, dict(zip(snakemake.params.sets, snakemake.input.queries)),
                  pools, snakemake.params.grid, snakemake.output.curve, device(), snakemake.params.normalize, residual,
                  SelectSettings(**snakemake.params.select))
