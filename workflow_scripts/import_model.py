from diffattr.jobs import job
from diffattr.models.diffusers_dir import import_unet, read_model_dir

with job(snakemake):
    import_unet(read_model_dir(snakemake.input.model), snakemake.output.checkpoint)
