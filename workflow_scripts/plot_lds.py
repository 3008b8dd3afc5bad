import pandas as pd

from diffattr.jobs import job
from diffattr.plots import lds_bars

with job(snakemake):
    lds_bars(pd.read_csv(snakemake.input.table), snakemake.output.png)
