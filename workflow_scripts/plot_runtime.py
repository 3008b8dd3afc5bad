from diffattr.atomic import write_csv
from diffattr.jobs import job
from diffattr.plots import method_runtime, read_benchmarks, runtime_plot, runtime_table

with job(snakemake):
    summary = runtime_table(read_benchmarks(snakemake.params.output_dir))
    write_csv(summary, snakemake.output.table)
    write_csv(method_runtime(snakemake.params.method_benchmarks), snakemake.output.methods)
    runtime_plot(summary, snakemake.output.png)
