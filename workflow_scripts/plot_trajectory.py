import pandas as pd

from diffattr.jobs import job
from diffattr.plots import trajectory_plot

with job(snakemake):
    overall = pd.read_csv(snakemake.input.lds).set_index("set")["lds"].get("gen")
    trajectory_plot(pd.read_csv(snakemake.input.steps), snakemake.output.png, overall)
