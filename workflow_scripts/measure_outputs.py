from diffattr.jobs import device, job
from diffattr.measure import measure_part

with job(snakemake):
    models = [tuple(key) for key in snakemake.params.models]
    measure_part(
        dict(zip(models, snakemake.input.models)),
        dict(zip(models, snakemake.params.outputs)),
        dict(zip(snakemake.params.sets, snakemake.input.stores)),
        snakemake.params.cfg,
        device(),
    )
