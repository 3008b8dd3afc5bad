import pandas as pd

from diffattr.jobs import job
from diffattr.plots import sweep_plot

with job(snakemake):
    sweep_plot(pd.read_csv(snakemake.input.table, keep_default_na=False, na_values=[""]), snakemake.output.png)
