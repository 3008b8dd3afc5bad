from diffattr.atomic import write_csv
from diffattr.counterfactual import evaluate_runs
from diffattr.jobs import device, job

with job(snakemake):
    runs = list(zip(snakemake.input.models, snakemake.input.removed))
    table = evaluate_runs(snakemake.input.original, runs, snakemake.input.generated, snakemake.input.table,
                          snakemake.params.cfg, device())
    write_csv(table, snakemake.output.table)
