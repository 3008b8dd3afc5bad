"""diffattr: training-data attribution for diffusion models, with a measured ground truth.

Importing the package (or :mod:`diffattr.config`) never imports torch, so the Snakemake DAG can be
built without it; modules that need torch import it themselves.
"""

__version__ = "0.1.0"
