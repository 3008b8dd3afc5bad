from diffattr.jobs import device, job
from diffattr.sample import record_trajectory

with job(snakemake):
    record_trajectory(snakemake.input.model, snakemake.params.cfg, snakemake.input.generated,
                      snakemake.output.trajectory, device())
