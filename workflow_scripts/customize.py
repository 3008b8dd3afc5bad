from diffattr.customization import customize_group
from diffattr.jobs import device, job

with job(snakemake):
    customize_group(snakemake.input.data, snakemake.input.model, snakemake.params.cfg, int(snakemake.wildcards.group),
                    snakemake.output.model, snakemake.output.images, snakemake.output.log_table,
                    snakemake.params.resume_dir, device())
