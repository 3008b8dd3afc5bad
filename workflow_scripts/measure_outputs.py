from diffattr.measure import measure_model
from diffattr.jobs import device, job

with job(snakemake):
    stores = dict(zip(snakemake.params.sets, snakemake.input.stores))
    measure_model(snakemake.input.model, stores, snakemake.params.cfg, snakemake.output.measurement, device())
