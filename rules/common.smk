# Config validation and the names of every artifact. Imports nothing heavy: no torch at DAG time.
import os
import re
from pathlib import Path
from types import SimpleNamespace

from snakemake.utils import min_version, validate

from diffattr.counterfactual import RANDOM_CONTROL, counterfactual_samples
from diffattr.customization import CustomizationConfig
from diffattr.config import (
    ConfigError,
    base_pipeline,
    check_config,
    feature_checkpoint_step,
    load_yaml,
    model_params,
    pool_params,
    pretrain_params,
    train_params,
    validate as validate_config,
)
from diffattr.methods.gradient import checkpoint_weights
from diffattr.methods.registry import method_kind
from diffattr.schedule import checkpoint_steps
from diffattr.store import kernel_form, shard_ranges, spec_hash
from diffattr.workflow.layout import METHOD_MODEL_KEY, SPEC_MODEL_KEY, Layout, fill

min_version("9.0")

SCHEMA = Path(workflow.basedir) / "schemas" / "config.schema.yaml"
try:  # every refusal is one sentence, re-raised here so that no frame of diffattr/ is printed
    validate_config(config, load_yaml(SCHEMA))  # one sentence naming the key
    validate(config, str(SCHEMA))  # Snakemake's own check (also fills schema defaults)
    # sweeps' derived methods and specs (added to config), the inputs, the data's split sizes
    SWEEPS, SIZES = check_config(config, load_yaml(SCHEMA))
except ConfigError as error:
    raise ConfigError(str(error)) from None

OUT = config["output_dir"]
LAYOUT = Layout(OUT)
"""Every artifact path (diffattr/workflow/layout.py); the names below are its templates."""
POOLS = [p for p, spec in config["subsets"]["pools"].items() if spec["count"] > 0]
SETS = config["evaluation"]["sets"]
METHODS = config["evaluation"].get("methods") or list(config["methods"])
SPECS = list(config.get("features", {}))
SIZES["journey"] = SIZES["gen"]  # one trajectory per generated sample
CKPT_STEPS = checkpoint_steps(
    config["train"]["steps"], config["train"]["checkpoint_fractions"]
)

DATA = LAYOUT.data
METADATA = LAYOUT.metadata
GENERATED = LAYOUT.generated
GENERATED_TABLE = LAYOUT.generated_table
TRAJECTORY = LAYOUT.trajectory
SUBSET_MASKS = LAYOUT.subset_masks
MODEL_DIR = LAYOUT.model_dir
CHECKPOINT = LAYOUT.checkpoint
MEASUREMENT = LAYOUT.measurement
GROUND_TRUTH = LAYOUT.ground_truth
RELIABILITY = LAYOUT.reliability
SCORES = LAYOUT.scores
STEP_SCORES = LAYOUT.step_scores
STEP_LDS = LAYOUT.step_lds
METHOD_LDS = LAYOUT.method_lds
RETRAINING_CURVE = LAYOUT.retraining_curve
LDS_TABLE = LAYOUT.lds_table
LDS_MARKDOWN = LAYOUT.lds_markdown
LDS_POOL = config["evaluation"]["lds"]["pool"]
MODEL_KEY = SPEC_MODEL_KEY
FEATURE_SHARD = LAYOUT.feature_shard
FEATURES = LAYOUT.features
GRAM_PARTIAL = LAYOUT.gram_partial
KERNEL = LAYOUT.kernel
LAMBDA_CURVE = LAYOUT.lambda_curve
ORACLE_CURVE = LAYOUT.oracle_curve
RESIDUAL = LAYOUT.residual
SCORE_BENCHMARK = LAYOUT.benchmark("score")
SELECT_BENCHMARK = LAYOUT.benchmark("select_lambda")
RESIDUAL_BENCHMARK = LAYOUT.benchmark("residuals")

CF_MODEL = LAYOUT.cf_model
CF_REMOVED = LAYOUT.cf_removed
CF_EVAL = LAYOUT.cf_eval
COUNTERFACTUAL = LAYOUT.counterfactual
COUNTERFACTUAL_SUMMARY = LAYOUT.counterfactual_summary
COUNTERFACTUAL_MARKDOWN = LAYOUT.counterfactual_markdown
SWEEP_TABLE = LAYOUT.sweep_table
CF = config.get("counterfactual") or {"methods": []}
CF_METHODS = [RANDOM_CONTROL, *CF["methods"]] if CF["methods"] else []
"""The random-removal control and the methods whose top-k the counterfactual stage removes (§4.5)."""
CF_SAMPLES = (
    counterfactual_samples(SIZES["gen"], CF["count"], CF["seed"]).tolist()
    if CF_METHODS
    else []
)

ARTIFACTS = {"data": DATA, "generated": GENERATED}
CUSTOM = config.get("customization") or {}
CUSTOM_GROUPS = CustomizationConfig.from_dict(CUSTOM).groups if CUSTOM else 0
"""AbC customization groups (§2.16; text_to_image only): fine-tune on exemplars, attribute their images."""
CUSTOM_MODEL = LAYOUT.custom_model
CUSTOM_LOG = LAYOUT.custom_log
CUSTOM_IMAGES = LAYOUT.custom_images
CUSTOMIZATION_TABLE = LAYOUT.customization_table
CUSTOMIZATION_MARKDOWN = LAYOUT.customization_markdown
BASE = base_pipeline(config)
"""The text-to-image base pipeline directory (a local SD pipeline, or pretrained by pretrain_base)."""
BASE_INPUT = [BASE] if BASE else []
"""Input of every job that loads the model: the base pipeline under a LoRA (nothing for a DDPM)."""
PRETRAIN_LOG = LAYOUT.pretrain_log

_RES = config.get("resources", {})
GPU = {"gpu": _RES.get("gpus", 0)} | (
    {"gpu_model": _RES["gpu_model"]} if _RES.get("gpu_model") else {}
)
"""GPU request of the rules that run the model on a device (gpu=0: none)."""
SLURM = {
    key: value
    for key, value in {
        "slurm_partition": _RES.get("slurm_partition")
        or os.environ.get("SNAKEMAKE_SLURM_PARTITION"),
        "slurm_account": _RES.get("slurm_account")
        or os.environ.get("SNAKEMAKE_SLURM_ACCOUNT"),
    }.items()
    if value
}
"""Partition and account from the config, else the environment, else the cluster's defaults."""


wildcard_constraints:
    pool="full|lds|select|retrain|encoded",
    subset=r"\d+",
    seed=r"\d+",
    set="|".join(SETS),
    method="|".join(map(re.escape, dict.fromkeys(METHODS + CF["methods"]))) or "none",
    spec="|".join(map(re.escape, SPECS)) or "none",
    split="train|val|gen|journey",
    shard=r"\d+",
    cf_method="|".join(CF_METHODS) if CF_METHODS else "none",
    sample=r"\d+",
    k=r"\d+",
    sweep="|".join(map(re.escape, SWEEPS)) or "none",
    group=r"\d+",


def checkpoint(pool, subset, seed, step=CKPT_STEPS[-1]):
    """A model's checkpoint file (the final one by default)."""
    return CHECKPOINT.format(pool=pool, subset=subset, seed=seed, step=step)


def pool_models(pool):
    """(subset, seed) of every model of a pool."""
    if pool == "full":
        return [(0, s) for s in config["full_model"]["seeds"]]
    spec = config["subsets"]["pools"][pool]
    return [(k, s) for k in range(spec["count"]) for s in spec["seeds"]]


def set_store(name):
    """Image store holding an attributed set (``journey``: the generated samples' trajectories)."""
    return LAYOUT.image_store(name)


def data_inputs():
    path = config["data"].get("path")
    return [path] if path else []


def print_table(title, path):
    if Path(path).exists():
        print(f"\n{title} ({path}):\n{Path(path).read_text()}")


def feature_step(spec):
    """The checkpoint step a feature spec uses (its fraction of training; check_inputs has refused
    the specs with jobs whose fraction is not a saved checkpoint)."""
    return feature_checkpoint_step(config, spec)


def feature_spec_params(w):
    """A feature spec as its jobs' params; a "trained"-timestep spec (Diffusion-TracIn) also names
    the training run whose draws it replays."""
    spec = config["features"][w.spec]
    if spec.get("timestep_strategy") != "trained":
        return spec
    if w.pool != "full":
        raise ConfigError(
            f"Feature spec '{w.spec}' uses trained timesteps, which only the full-data models have."
        )
    run = {
        "batch_size": config["train"]["batch_size"],
        "seed": int(w.seed),
        "step": feature_step(w.spec),
    }
    return spec | {"trained": run}


def shard_ranges_of(spec, split):
    return shard_ranges(SIZES[split], config["features"][spec]["shard_size"])


def kernel_form_of(spec):
    return kernel_form(SIZES["train"], config["features"][spec]["projection"]["dim"])


def kernel_inputs(w):
    if kernel_form_of(w.spec) == "primal":
        n = len(shard_ranges_of(w.spec, "train"))
        return {
            "partials": [
                GRAM_PARTIAL.format(**dict(w.items()), shard=i) for i in range(n)
            ]
        }
    return {"train": FEATURES.format(**dict(w.items()), split="train")}


def method_inputs(w):
    """The artifacts a method's kind declares it needs (the generated set only for "gen");
    "kernel_models": kernel, train and query features and chosen λ of each of its models (and DAS's
    residual weights); "feature_models": train and query features of each of its checkpoint specs;
    "full_model": the full model's final checkpoint (for an embedding method: with the DDPM encoder);
    "encoded_models": the encoded pool's masks and its members' final checkpoints.
    """
    method = config["methods"][w.method]
    needs = method_kind(method).needs
    inputs = {
        n: ARTIFACTS[n]
        for n in needs
        if n in ARTIFACTS and (n != "generated" or w.set == "gen")
    }
    if "kernel_models" in needs:
        spec = method_spec(w.method)
        for i, (pool, subset, seed) in enumerate(method_models(w.method)):
            m = {"pool": pool, "subset": subset, "seed": seed}
            inputs[f"kernel_{i}"] = model_artifact(KERNEL, spec, m)
            inputs[f"train_{i}"] = model_artifact(FEATURES, spec, m, split="train")
            inputs[f"query_{i}"] = model_artifact(
                FEATURES, spec, m, split=query_split(w.method, w.set)
            )
            inputs[f"lambda_{i}"] = LAMBDA_CURVE.format(method=w.method, **m)
            if method.get("residual"):
                inputs[f"residual_{i}"] = RESIDUAL.format(method=w.method, **m)
    if "feature_models" in needs:
        m = {"pool": "full", "subset": 0, "seed": config["full_model"]["seeds"][0]}
        for c, spec in enumerate(method_specs(w.method)):
            inputs[f"train_{c}"] = model_artifact(FEATURES, spec, m, split="train")
            inputs[f"query_{c}"] = model_artifact(FEATURES, spec, m, split=w.set)
    if "retrain_truth" in needs:
        inputs["masks"] = SUBSET_MASKS.format(pool="retrain")
        inputs["truth"] = GROUND_TRUTH.format(pool="retrain")
    if "encoded_models" in needs:
        inputs["masks"] = SUBSET_MASKS.format(pool="encoded")
        pool = config["subsets"]["pools"]["encoded"]
        for k in range(pool["count"]):
            inputs[f"member_{k}"] = checkpoint("encoded", k, pool["seeds"][0])
    if "full_model" in needs and method.get("encoder", "ddpm") == "ddpm":
        inputs["checkpoint"] = checkpoint("full", 0, config["full_model"]["seeds"][0])
        if BASE:
            inputs["base"] = BASE
    return inputs


def journey_inputs(w):
    """A Journey-TRAK method's scoring inputs on the generated set (for its per-step scores)."""
    return method_inputs(SimpleNamespace(method=w.method, set="gen"))


def method_benchmarks(w):
    """Benchmark files of a method's own jobs: scoring, λ selection and residuals of its models."""
    files = [
        SCORE_BENCHMARK.format(method=w.method, set=s) for s in method_sets(w.method)
    ]
    if config["methods"][w.method]["kind"] == "trak":
        for pool, subset, seed in method_models(w.method):
            m = {"method": w.method, "pool": pool, "subset": subset, "seed": seed}
            files.append(SELECT_BENCHMARK.format(**m))
            if config["methods"][w.method].get("residual"):
                files.append(RESIDUAL_BENCHMARK.format(**m))
    return files


def method_params(method):
    """A method's config block as its jobs' params, with what the DAG derives for it: TracIn's
    checkpoint weights, the model config of methods that run the full model."""
    params = dict(config["methods"][method])
    if params["kind"] == "gradient":
        train = config["train"]
        steps = [feature_step(spec) for spec in method_specs(method)]
        params["weights"] = checkpoint_weights(
            steps,
            params["weighting"],
            train["steps"],
            train["lr"],
            train["warmup_fraction"],
        )
    if "full_model" in method_kind(params).needs:
        params |= model_params(config)
    if "encoded_models" in method_kind(params).needs or params["kind"] == "unlearning":
        params |= model_params(config) | {"ground_truth": config["ground_truth"]}
    return params


def method_sets(method):
    """The attributed sets a method scores: Journey-TRAK is defined for generated samples only (§2.12)."""
    if config["methods"][method].get("query") == "journey":
        return [s for s in SETS if s == "gen"]
    return SETS


def query_split(method, set_name):
    """The feature split of a method's queries on an attributed set."""
    return (
        "journey" if config["methods"][method].get("query") == "journey" else set_name
    )


def method_spec(method):
    return config["methods"][method]["features"]


def method_specs(method):
    """The feature specs a gradient method reads, one per checkpoint."""
    specs = config["methods"][method]["features"]
    return specs if isinstance(specs, list) else [specs]


def method_models(method):
    """(pool, subset, seed) of the models a method scores with (several: an ensemble)."""
    models = config["methods"][method]["models"]
    if models["pool"] == "full":
        return [
            ("full", 0, s) for s in config["full_model"]["seeds"][: models["count"]]
        ]
    seed = config["subsets"]["pools"][models["pool"]]["seeds"][0]
    return [(models["pool"], k, seed) for k in range(models["count"])]


def model_artifact(pattern, spec, w, **extra):
    """A per-model artifact path for wildcards (or a dict) holding pool, subset and seed."""
    get = w.get if isinstance(w, dict) else lambda key: getattr(w, key)
    return pattern.format(
        spec=spec, pool=get("pool"), subset=get("subset"), seed=get("seed"), **extra
    )


RETRAINING_METHODS = [
    m for m in METHODS if config["methods"][m]["kind"] == "retraining"
]
"""Methods fitted on retrain-pool models: each also gets its LDS-vs-number-of-models table."""

JOURNEY_METHODS = [m for m in METHODS if config["methods"][m].get("query") == "journey"]
"""Journey-TRAK methods: their per-step scores and per-step LDS are stored for the report."""

ORACLE_MODELS = {
    m: method_models(m)
    for m in METHODS
    if config["methods"][m]["kind"] == "trak" and len(method_models(m)) == 1
}
"""Single-model kernel methods: their λ tuned on the lds pool is reported as a labelled diagnostic."""


def cf_run(w):
    """One retraining's removal: the sample, k and (control only) the draw seed; the retraining
    seed is the generating model's."""
    run = {"method": w.cf_method, "sample": int(w.sample), "k": int(w.k)}
    if w.cf_method == RANDOM_CONTROL:
        run["seed"] = CF["seed"]
    return run | {"model_seed": config["generate"]["model_seed"]}


def cf_scores(w):
    """The attribution method's scores on the generated set (the control needs none)."""
    if w.cf_method == RANDOM_CONTROL:
        return {}
    return {"scores": SCORES.format(method=w.cf_method, set="gen")}


def cf_runs(w):
    """Checkpoints and removal tables of one method's retrained models, sample-major."""
    keys = [
        {"cf_method": w.cf_method, "sample": s, "k": k}
        for s in CF_SAMPLES
        for k in CF["ks"]
    ]
    return {
        "models": [CF_MODEL.format(**key) for key in keys],
        "removed": [CF_REMOVED.format(**key) for key in keys],
    }


def customization_params(w):
    """A customization job's params: the model, the customization block and the DDIM sampler."""
    generate = {k: v for k, v in config["generate"].items() if k != "model_seed"}
    return {**model_params(config), "customization": CUSTOM, "generate": generate}


def lambda_sweep_inputs(pool):
    """Inputs of a λ sweep of one model of a kernel method, scored by LDS on ``pool``."""

    def inputs(w):
        spec = method_spec(w.method)
        residual = config["methods"][w.method].get("residual")
        return {
            "kernel": model_artifact(KERNEL, spec, w),
            "train": model_artifact(FEATURES, spec, w, split="train"),
            "queries": [
                model_artifact(FEATURES, spec, w, split=query_split(w.method, s))
                for s in method_sets(w.method)
            ],
            "masks": [SUBSET_MASKS.format(pool=pool)],
            "truths": [GROUND_TRUTH.format(pool=pool)],
            "residuals": [RESIDUAL.format(**dict(w.items()))] if residual else [],
        }

    return inputs


def lambda_sweep_params(pool):
    """Params of a λ sweep: the method's grid and weighting, its sets, and the pool."""
    return {
        "grid": lambda w: config["methods"][w.method]["lambdas"],
        "normalize": lambda w: config["methods"][w.method].get("normalize", "none"),
        "sets": lambda w: method_sets(w.method),
        "pools": [pool],
    }
