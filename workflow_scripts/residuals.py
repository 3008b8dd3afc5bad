from diffattr.jobs import device, job
from diffattr.methods.das import write_residuals

with job(snakemake):
    write_residuals(snakemake.input.model, snakemake.input.data, snakemake.params.residual, snakemake.output.residuals, device())
