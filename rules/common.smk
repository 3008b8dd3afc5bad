# Config validation and the names of every artifact. Imports nothing heavy: no torch at DAG time.
from pathlib import Path

from snakemake.utils import min_version, validate

from diffattr.config import (
    ConfigError,
    check_inputs,
    load_yaml,
    model_params,
    pool_params,
    train_params,
    validate as validate_config,
)
from diffattr.methods.registry import method_kind
from diffattr.schedule import checkpoint_steps

min_version("9.0")

SCHEMA = Path(workflow.basedir) / "schemas" / "config.schema.yaml"
validate_config(config, load_yaml(SCHEMA))  # one sentence naming the key
validate(config, str(SCHEMA))  # Snakemake's own check (also fills schema defaults)
check_inputs(config)

OUT = config["output_dir"]
POOLS = [p for p, spec in config["subsets"]["pools"].items() if spec["count"] > 0]
SETS = config["evaluation"]["sets"]
METHODS = list(config["methods"])
CKPT_STEPS = checkpoint_steps(
    config["train"]["steps"], config["train"]["checkpoint_fractions"]
)

DATA = f"{OUT}/data/dataset.zarr"
METADATA = f"{OUT}/data/metadata.csv"
GENERATED = f"{OUT}/data/generated.zarr"
GENERATED_TABLE = f"{OUT}/data/generated.csv"
SUBSET_MASKS = f"{OUT}/subsets/{{pool}}.zarr"
MODEL_DIR = f"{OUT}/models/{{pool}}/{{subset}}/seed{{seed}}"
MEASUREMENT = f"{OUT}/ground_truth/{{pool}}/{{subset}}/seed{{seed}}.zarr"
GROUND_TRUTH = f"{OUT}/ground_truth/{{pool}}.zarr"
RELIABILITY = f"{OUT}/ground_truth/{{pool}}_reliability.csv"
SCORES = f"{OUT}/scores/{{method}}/{{set}}.zarr"
METHOD_LDS = f"{OUT}/eval/lds/{{method}}.csv"
LDS_TABLE = f"{OUT}/lds.csv"
LDS_MARKDOWN = f"{OUT}/lds.md"
LDS_POOL = config["evaluation"]["lds"]["pool"]

ARTIFACTS = {"data": DATA, "generated": GENERATED}


wildcard_constraints:
    pool="full|lds|select|retrain",
    subset=r"\d+",
    seed=r"\d+",
    set="|".join(SETS),
    method="|".join(METHODS) if METHODS else "none",


def checkpoint(pool, subset, seed, step=CKPT_STEPS[-1]):
    """A model's checkpoint file (the final one by default)."""
    return MODEL_DIR.format(pool=pool, subset=subset, seed=seed) + f"/step{step}.safetensors"


def pool_models(pool):
    """(subset, seed) of every model of a pool."""
    if pool == "full":
        return [(0, s) for s in config["full_model"]["seeds"]]
    spec = config["subsets"]["pools"][pool]
    return [(k, s) for k in range(spec["count"]) for s in spec["seeds"]]


def set_store(name):
    """Image store holding an attributed set."""
    return GENERATED if name == "gen" else DATA


def data_inputs():
    path = config["data"].get("path")
    return [path] if path else []


def print_table(path):
    if Path(path).exists():
        print("\nLDS (" + path + "):\n" + Path(path).read_text())
