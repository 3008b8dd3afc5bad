from diffattr.counterfactual import gather
from diffattr.jobs import job

with job(snakemake):
    b = snakemake.params.bootstrap
    gather(list(snakemake.input.tables), snakemake.output.results, snakemake.output.summary,
           snakemake.output.markdown, b["resamples"], b["confidence"], b["seed"])
