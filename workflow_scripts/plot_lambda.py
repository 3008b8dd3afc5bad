import pandas as pd

from diffattr.jobs import job
from diffattr.methods.trak import with_oracle
from diffattr.plots import lambda_curves

with job(snakemake):
    curves = {m: pd.read_csv(p) for m, p in zip(snakemake.params.methods, snakemake.input.curves)}
    for m, p in zip(snakemake.params.oracle_methods, snakemake.input.oracle):
        curves[m] = with_oracle(curves[m], pd.read_csv(p))
    lambda_curves(curves, snakemake.output.png)
