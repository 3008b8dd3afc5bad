from diffattr.jobs import device, job
from diffattr.train import train_model

with job(snakemake):
    train_model(
        snakemake.input.data,
        snakemake.params.cfg,
        seed=int(snakemake.wildcards.seed),
        checkpoints=list(snakemake.output.checkpoints),
        log_table=snakemake.output.log_table,
        resume_dir=snakemake.params.resume_dir,
        device=device(),
    )
