import pandas as pd

from diffattr.jobs import job
from diffattr.plots import lambda_curves

with job(snakemake):
    curves = {m: pd.read_csv(p) for m, p in zip(snakemake.params.methods, snakemake.input.curves)}
    lambda_curves(curves, snakemake.output.png)
