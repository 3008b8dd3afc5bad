from diffattr.counterfactual import train_counterfactual
from diffattr.jobs import device, job

with job(snakemake):
    train_counterfactual(
        snakemake.input.data,
        snakemake.input.get("scores"),
        snakemake.params.cfg,
        snakemake.params.run,
        snakemake.output.model,
        snakemake.output.removed,
        snakemake.output.log_table,
        snakemake.params.resume_dir,
        device(),
    )
