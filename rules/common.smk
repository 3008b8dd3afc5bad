# Validation, then the plan. Every rule's inputs and params are methods of `plan`
# (diffattr/workflow/plan.py: pure functions of the validated config, unit-tested without Snakemake)
# and every path a template of `L` (diffattr/workflow/layout.py). Imports nothing heavy: no torch.
import copy
from pathlib import Path

from snakemake.utils import min_version

from diffattr.config import (
    ConfigError,
    load_yaml,
    pool_params,
    pretrain_params,
    train_params,
)
from diffattr.store import spec_hash
from diffattr.workflow.layout import fill
from diffattr.workflow.plan import Plan

min_version("9.0")

SCHEMA = Path(workflow.basedir) / "schemas" / "config.schema.yaml"
RUN_CONFIG = copy.deepcopy(config)
"""The merged config as given (before defaults and checks), recorded by onstart for `diffattr query --run`."""
try:  # every refusal is one sentence, re-raised here so that no frame of diffattr/ is printed
    # plugins imported, the schema (one sentence naming the key), its defaults filled in, the sweeps'
    # derived methods and specs added, the inputs checked, the data's split sizes counted
    plan = Plan.of(config, load_yaml(SCHEMA))
except ConfigError as error:
    raise ConfigError(str(error)) from None

L = plan.layout
OUT = config["output_dir"]
GPU = plan.resources.gpu
"""GPU request of the rules that run the model on a device (gpu=0: none)."""
SLURM = plan.resources.slurm
"""Partition and account from the config, else the environment, else the cluster's defaults."""


wildcard_constraints:
    **plan.wildcard_constraints(),


def print_table(title, path):
    if Path(path).exists():
        print(f"\n{title} ({path}):\n{Path(path).read_text()}")
