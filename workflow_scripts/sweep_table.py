from diffattr.atomic import write_csv
from diffattr.jobs import job
from diffattr.sweeps import sweep_table

with job(snakemake):
    table = sweep_table(snakemake.wildcards.sweep, snakemake.params.key, snakemake.params.points,
                        list(snakemake.input.tables))
    write_csv(table, snakemake.output.table)
