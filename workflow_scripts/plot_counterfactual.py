import pandas as pd

from diffattr.jobs import job
from diffattr.plots import counterfactual_plot

with job(snakemake):
    counterfactual_plot(pd.read_csv(snakemake.input.results), snakemake.output.png)
