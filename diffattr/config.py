"""Config validation with one-sentence errors, and the slices of config each job receives.

Torch-free: the Snakefile imports this at DAG-build time. Every job gets only its own slice of the
config as ``params`` (:func:`train_params` etc.), so Snakemake's params trigger reruns exactly the
jobs a change touches (DESIGN.md "Config"); scripts never read the global config.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from diffattr.errors import ConfigError  # re-exported: `from diffattr.config import ConfigError`

SOURCES_WITH_PATH = {"cifar10", "image_folder", "npz"}
MIN_SUBSETS = 2
"""Subset models an LDS needs: it is a Spearman correlation across them (docs/methods.md §4.4)."""
DEFAULT_FEATURE_CHECKPOINT = 1.0
"""A feature spec's ``checkpoint`` when it sets none: the final one."""
DEFAULT_FAMILY = "ddpm"
"""``model.family`` when the config sets none (:func:`model_family`)."""
DEFAULT_CAPTION_TEMPLATE = "a {label} painting"
"""``model.text_to_image.caption_template`` when the config sets none (ArtBench's captions)."""


def model_family(config: dict[str, Any]) -> str:
    """The config's model family: ``model.family``, else :data:`DEFAULT_FAMILY`."""
    return config["model"].get("family", DEFAULT_FAMILY)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file's content ({} for an empty file)."""
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def yaml_problem(error: yaml.YAMLError | UnicodeDecodeError) -> str:
    """Where and what a YAML parse error is: ``line L, column C: problem`` (1-based, as editors count)."""
    if isinstance(error, UnicodeDecodeError):
        return f"byte {error.start}: it is not UTF-8 text"
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def read_config_file(path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """One config file's mapping of keys; a file that is not YAML (its line and column named) or not a
    mapping is refused in one sentence naming it as ``name`` (default: its path). The Snakefile checks
    its own config.yaml with this before Snakemake's ``configfile:`` reads it; the CLI every file."""
    name = str(path) if name is None else name
    try:
        layer = load_yaml(path)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"Config file '{name}' is not valid YAML: {yaml_problem(error)}.") from None
    if not isinstance(layer, dict):
        raise ConfigError(f"Config file '{name}' must hold a mapping of config keys, not a {type(layer).__name__}.")
    return layer


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def describe(error: jsonschema.ValidationError) -> str:
    """One sentence naming the offending key for a jsonschema error."""
    key = _key(error.absolute_path)
    v = error.validator
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"{key}." if error.absolute_path else ""
        allowed = ", ".join(sorted(error.schema.get("properties", {}))) or "none"
        return f"Unknown config key '{where}{extra[0]}' (allowed here: {allowed})."
    if v == "required":
        missing = error.message.split("'")[1]
        where = f"{key}." if error.absolute_path else ""
        return f"Config key '{where}{missing}' is required but missing."
    if v == "type":
        return f"Config key '{key}' must be of type {error.validator_value}, got {error.instance!r}."
    if v == "enum":
        return f"Config key '{key}' must be one of {error.validator_value}, got {error.instance!r}."
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": "at least", "exclusiveMinimum": "greater than",
                 "maximum": "at most", "exclusiveMaximum": "less than"}[v]
        return f"Config key '{key}' must be {words} {error.validator_value}, got {error.instance!r}."
    if v in ("minItems", "maxItems", "uniqueItems", "minLength", "pattern", "minProperties"):
        return f"Config key '{key}' is invalid: {error.message}."
    return f"Config key '{key}' is invalid: {error.message}."


def validate(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` with one sentence for the most relevant schema violation."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(config))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        while best.context:  # if/then and anyOf wrap the error that names the key
            best = jsonschema.exceptions.best_match(best.context)
        raise ConfigError(describe(best))


def schema_with_kinds(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every registered method kind allowed: a plugin kind (registry.register) that
    the schema file does not name gets its block's schema from its settings dataclass
    (:func:`diffattr.methods.registry.settings_schema`). The file's own kinds are unchanged."""
    import copy

    from diffattr.methods.registry import KINDS, settings_schema

    schema = copy.deepcopy(schema)
    methods = schema["properties"]["methods"]["additionalProperties"]
    enum = methods["properties"]["kind"]["enum"]
    for name, kind in KINDS.items():
        if name not in enum:
            enum.append(name)
            schema["$defs"][f"method_{name}"] = settings_schema(kind)
            methods["allOf"].append({"if": {"properties": {"kind": {"const": name}}},
                                     "then": {"$ref": f"#/$defs/method_{name}"}})
    return schema


def fill_defaults(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Set every missing key the schema gives a ``default:`` (in place), wherever validation visits
    an object's ``properties``: the rule Snakemake's ``validate(..., set_default=True)`` applies."""
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, sub["default"])
        yield from check_properties(validator, properties, instance, subschema)

    jsonschema.validators.extend(base, {"properties": set_defaults})(schema).validate(config)


def resolve_config(config: dict[str, Any], schema: dict[str, Any],
                   base: str | os.PathLike = ".") -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """The DAG's whole config step, in place: import the ``plugins``, validate against the schema
    with their kinds (one sentence naming the key), fill the schema's defaults, then
    :func:`check_config`. Returns what check_config returns."""
    from diffattr.methods.registry import load_plugins

    plugins = config.get("plugins") or []
    if not isinstance(plugins, list):
        raise ConfigError("Config key 'plugins' is invalid: it must be a list of module names.")
    try:
        load_plugins(plugins)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    schema = schema_with_kinds(schema)
    validate(config, schema)
    fill_defaults(config, schema)
    return check_config(config, schema, base)


def _retrain_models_needed(method: dict[str, Any]) -> int:
    """How many retrain-pool models a method reads (datamodels, EI, ensembles)."""
    if method["kind"] == "retraining":
        return method["models"]
    models = method.get("models", {})
    return models.get("count", 0) if models.get("pool") == "retrain" else 0


def used_methods(config: dict[str, Any]) -> list[str]:
    """The method blocks that get jobs: ``evaluation.methods`` (null: every block under methods),
    then the counterfactual stage's that exist, without repeats."""
    methods = config.get("methods", {})
    if config.get("attribute"):  # an attribute run's methods, and no counterfactual
        return list(config["attribute"]["methods"])
    evaluated = config["evaluation"].get("methods")
    removed = [m for m in (config.get("counterfactual") or {}).get("methods") or [] if m in methods]
    return list(dict.fromkeys([*(list(methods) if evaluated is None else evaluated), *removed]))


def check_output_dir(config: dict[str, Any], base: str | os.PathLike = ".") -> None:
    """``output_dir`` must be a directory or creatable as one: its nearest existing ancestor is a directory."""
    path = Path(base, config["output_dir"])
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "which" if existing == path else f"but '{existing}'"
                raise ConfigError(f"Config key 'output_dir' is '{config['output_dir']}', {where} is an existing file, "
                                  f"not a directory.")
            return


def _images_phrase(data: dict[str, Any]) -> str:
    """How a refusal names the data's images."""
    from diffattr.data.settings import DataConfig

    cfg = DataConfig.from_dict(data)
    return {"digits": "the digits images", "cifar10": "the CIFAR-10 images",
            "mnist": f"the MNIST images (data.resolution {cfg.resolution or 28})",
            "image_folder": f"the images (data.resolution {cfg.resolution}, data.color {cfg.color})",
            }.get(cfg.source, f"the images in '{cfg.path}' (data.path)")


def check_image_shape(config: dict[str, Any], shape: tuple[int, int, int]) -> None:
    """The model must take the data's (H, W, C) images: a DDPM's UNet ``sample_size`` is H = W and
    its ``in_channels`` is C; a text-to-image VAE takes any size but its ``in_channels`` must be C."""
    height, width, channels = shape
    if model_family(config) == "text_to_image":
        key, model = "model.text_to_image.vae", config["model"]["text_to_image"].get("vae", {})
    else:
        key, model = "model.unet", config["model"]["unet"]
        if (model["sample_size"], model["sample_size"]) != (height, width):
            raise ConfigError(f"Config key 'model.unet.sample_size' is {model['sample_size']} but "
                              f"{_images_phrase(config['data'])} are {height}×{width}.")
    if model.get("in_channels", channels) != channels:
        raise ConfigError(f"Config key '{key}.in_channels' is {model['in_channels']} but "
                          f"{_images_phrase(config['data'])} have {channels} channel(s).")


def check_pools(config: dict[str, Any]) -> None:
    """The LDS pool (``evaluation.lds.pool``) needs at least :data:`MIN_SUBSETS` subsets, and so does
    the select pool when a kernel method (one that chooses λ by LDS on it) gets jobs."""
    from diffattr.methods.registry import method_kind

    pools = config["subsets"]["pools"]
    lds = config["evaluation"]["lds"]["pool"]
    count = pools.get(lds, {"count": 0})["count"]
    if count < MIN_SUBSETS:
        raise ConfigError(f"Config key 'subsets.pools.{lds}.count' is {count}, but the LDS (evaluation.lds.pool {lds}) "
                          f"correlates across subset models and needs at least {MIN_SUBSETS}.")
    select = pools.get("select", {"count": 0})["count"]
    for name in used_methods(config):
        needs = method_kind(config["methods"][name]).needs
        if "kernel_models" in needs and select < MIN_SUBSETS:
            raise ConfigError(f"Config key 'subsets.pools.select.count' is {select}, but methods.{name} chooses its λ "
                              f"by LDS on the select pool, which needs at least {MIN_SUBSETS} subset models.")
        if "select_truth" in needs and select < MIN_SUBSETS:
            raise ConfigError(f"Config key 'subsets.pools.select.count' is {select}, but methods.{name} fits its "
                              f"weights on the select pool, which needs at least {MIN_SUBSETS} subset models.")


def feature_checkpoint_step(config: dict[str, Any], spec: str) -> int:
    """The training step whose checkpoint a feature spec reads, round(checkpoint × train.steps) (at
    least 1); it must be one that ``train.checkpoint_fractions`` saves."""
    from diffattr.schedule import checkpoint_steps

    train = config["train"]
    fraction = config["features"][spec].get("checkpoint", DEFAULT_FEATURE_CHECKPOINT)
    step = checkpoint_steps(train["steps"], [fraction])[0]
    if step not in checkpoint_steps(train["steps"], train["checkpoint_fractions"]):
        if config.get("attribute"):  # its fractions are the user's checkpoints (diffattr.attribute.adopt_model)
            raise ConfigError(f"Config key 'features.{spec}' reads the checkpoint at {fraction:g} of training, which "
                              f"attribute.checkpoints does not give (a user's model has its final weights and the "
                              f"checkpoints it names).")
        raise ConfigError(f"Config key 'features.{spec}.checkpoint' is {fraction}, which is not one of "
                          f"train.checkpoint_fractions {train['checkpoint_fractions']}.")
    return step


def method_feature_specs(method: dict[str, Any]) -> list[str]:
    """The feature specs a method block names (none, one, or one per checkpoint)."""
    specs = method.get("features", [])
    return [specs] if isinstance(specs, str) else list(specs)


def check_inputs(config: dict[str, Any], base: str | os.PathLike = ".") -> None:
    """Checks the schema cannot express, before anything is written: the output directory can be
    one, input paths exist, the data's images fit the model (:func:`check_image_shape`), the method
    lists name blocks, the pools can give an LDS (:func:`check_pools`) and every feature spec a
    method with jobs reads names a saved checkpoint (:func:`feature_checkpoint_step`)."""
    from diffattr.data.sizes import image_shape

    check_output_dir(config, base)
    data = config["data"]
    if data["source"] in SOURCES_WITH_PATH:
        if not data.get("path"):
            raise ConfigError(f"Config key 'data.path' is required for data.source '{data['source']}'.")
        path = Path(base, data["path"])
        if not path.exists():
            raise ConfigError(f"Config key 'data.path' points at '{data['path']}', which does not exist.")
        if data["source"] != "npz" and not path.is_dir():
            raise ConfigError(f"Config key 'data.path' points at '{data['path']}', which is a file, but data.source "
                              f"'{data['source']}' reads a folder.")
    if data["source"] == "image_folder" and not data.get("resolution"):
        raise ConfigError("Config key 'data.resolution' is required for data.source 'image_folder'.")
    methods = config.get("methods", {})
    if config["evaluation"].get("methods") == []:
        raise ConfigError("Config key 'evaluation.methods' is empty; leave the key out (null) to evaluate every "
                          "method, or name at least one.")
    for name in config["evaluation"].get("methods") or []:
        if name not in methods:
            raise ConfigError(f"Config key 'evaluation.methods' names '{name}', which is not a block under 'methods'.")
    reference = config["evaluation"]["lds"].get("reference")
    if reference is not None and reference not in methods:
        raise ConfigError(f"Config key 'evaluation.lds.reference' names '{reference}', which is not a block under 'methods'.")
    if config.get("customization") and model_family(config) != "text_to_image":
        raise ConfigError("Config key 'customization' needs model.family text_to_image (it customizes a LoRA).")
    if model_family(config) == "text_to_image":
        check_text_to_image(config)
    check_image_shape(config, image_shape(data, base))
    retrain = config["subsets"]["pools"].get("retrain", {"count": 0})["count"]
    for name in used_methods(config):
        if name not in methods:
            continue  # an attribute run's unknown name: check_attribute refuses it, naming its key
        method = methods[name]
        for spec in method_feature_specs(method):
            if spec not in config.get("features", {}):
                raise ConfigError(f"Config key 'methods.{name}.features' names '{spec}', which is not a block under 'features'.")
            feature_checkpoint_step(config, spec)
        if config.get("attribute"):
            continue  # no subset pools: check_attribute refuses the kinds that need them
        if method.get("query") == "journey" and "gen" not in config["evaluation"]["sets"]:
            raise ConfigError(f"Config key 'methods.{name}.query' is journey, which attributes generated samples only, "
                              f"but 'evaluation.sets' has no gen.")
        members = config["subsets"]["pools"].get("encoded", {"count": 0})["count"]
        if method["kind"] == "encoded" and members < 2:
            raise ConfigError(f"Config key 'methods.{name}' is an encoded ensemble, which needs "
                              f"'subsets.pools.encoded.count' models (an even number of at least 2); it is {members}.")
        if method["kind"] in ("stack", "select"):
            check_combined(config, name)
        wanted = _retrain_models_needed(method)
        if wanted > retrain:
            raise ConfigError(f"Config key 'methods.{name}' needs {wanted} retrain-pool models but "
                              f"'subsets.pools.retrain.count' is {retrain}.")
    check_model_dirs(config)
    check_pools(config)


def check_combined(config: dict[str, Any], name: str) -> None:
    """A stack's or a select method's components (``methods.<name>.methods``; the schema: at least 2,
    distinct) are evaluated methods; a stack's include no stack or select, a select's no select (a
    select may choose a stack); a Journey-TRAK component has its gen set."""
    from diffattr.methods.registry import method_kind

    key, methods = f"methods.{name}.methods", config["methods"]
    kind = methods[name]["kind"]
    evaluated = config["evaluation"].get("methods") or list(methods)
    components = config["methods"][name]["methods"]
    for c in components:
        if c not in methods:
            raise ConfigError(f"Config key '{key}' names '{c}', which is not a block under 'methods'.")
        if c not in evaluated:
            raise ConfigError(f"Config key '{key}' names '{c}', which 'evaluation.methods' does not evaluate, so it "
                              f"has no scores to {'stack' if kind == 'stack' else 'choose'}.")
        inner = methods[c]["kind"]
        if kind == "stack" and "component_scores" in method_kind(methods[c]).needs:
            raise ConfigError(f"Config key '{key}' names '{c}', which is itself a {inner}; stack its components instead.")
        if kind == "select" and inner == "select":
            raise ConfigError(f"Config key '{key}' names '{c}', which is itself a select; list its candidates instead.")
    if any(methods[c].get("query") == "journey" for c in components) and "gen" not in config["evaluation"]["sets"]:
        raise ConfigError(f"Config key '{key}' names a Journey-TRAK method, which scores gen only, but "
                          f"'evaluation.sets' has no gen.")


def _check_model_dir(key: str, path: str, pipeline: bool = False) -> None:
    """A model directory named by ``key`` must hold safetensors weights and a config.json
    (:mod:`diffattr.models.weights`, torch-free); the reason becomes a sentence naming the key."""
    from diffattr.models.weights import ModelDirectoryError, check_pipeline_dir, check_weights_dir

    try:
        (check_pipeline_dir if pipeline else check_weights_dir)(path)
    except ModelDirectoryError as error:
        raise ConfigError(f"Config key '{key}' points at '{path}': {error}") from None


def check_model_dirs(config: dict[str, Any]) -> None:
    """Every local CLIP directory a method or the counterfactual stage will load is checked before any
    job runs (a pickle-only or incomplete directory is refused, naming the key)."""
    for name in used_methods(config):
        method = config["methods"][name]
        if method.get("kind") == "embedding" and method.get("encoder") == "clip" and method.get("path"):
            _check_model_dir(f"methods.{name}.path", method["path"])
    embedding = (config.get("counterfactual") or {}).get("embedding") or {}
    if (config.get("counterfactual") or {}).get("methods") and embedding.get("encoder") == "clip" and embedding.get("path"):
        _check_model_dir("counterfactual.embedding.path", embedding["path"])


def check_text_to_image(config: dict[str, Any]) -> None:
    """What the text_to_image family needs and what it does not support yet (one sentence each)."""
    from diffattr.methods.registry import method_kind

    model, methods = config["model"], config.get("methods", {})
    t2i = model["text_to_image"]
    if t2i.get("pipeline_path"):
        if not Path(t2i["pipeline_path"]).is_dir():
            raise ConfigError(f"Config key 'model.text_to_image.pipeline_path' points at '{t2i['pipeline_path']}', "
                              f"which is not a directory.")
        _check_model_dir("model.text_to_image.pipeline_path", t2i["pipeline_path"], pipeline=True)
    elif not config["data"].get("n_base"):
        raise ConfigError("Config key 'data.n_base' is required when 'model.text_to_image' builds its base pipeline "
                          "(no pipeline_path): the base is pretrained on that split.")
    generates = config["attribute"].get("generate") if config.get("attribute") else "gen" in config["evaluation"]["sets"]
    if not config["generate"].get("prompts") and generates:
        raise ConfigError("Config key 'generate.prompts' is required for the text_to_image family.")
    for name in used_methods(config):
        if name not in methods:
            continue  # an attribute run's unknown name is refused by check_attribute, naming its key
        method = methods[name]
        if ("text_to_image" not in method_kind(method).families or method.get("query") == "journey"
                or method.get("residual")):
            raise ConfigError(f"Config key 'methods.{name}' is not supported for the text_to_image family yet; "
                              f"evaluate it with a ddpm model or leave it out of evaluation.methods.")
    if config.get("attribute"):  # it trains nothing and removes nothing: the rest does not apply
        return
    if config["train"].get("hflip"):
        raise ConfigError("Config key 'train.hflip' must be false for the text_to_image family (its inputs are latents).")
    counterfactual = config.get("counterfactual") or {}
    if counterfactual.get("methods") and counterfactual.get("embedding") is not None:
        raise ConfigError("Config key 'counterfactual.embedding' must be null for the text_to_image family "
                          "(its encoders are the DDPM's UNet or CLIP on pixels; pixel L2 and ΔL_Simple remain).")


def check_encoded_pool(config: dict[str, Any], n_train: int) -> None:
    """The encoded pool's E models must give every training sample its own balanced code (§2.18)."""
    members = config["subsets"]["pools"].get("encoded", {"count": 0})["count"]
    if members == 0:
        return
    if members % 2:
        raise ConfigError(f"Config key 'subsets.pools.encoded.count' is {members}; an encoded ensemble needs an even number of models.")
    if math.comb(members, members // 2) < n_train:
        raise ConfigError(f"Config key 'subsets.pools.encoded.count' is {members}, whose {math.comb(members, members // 2)} "
                          f"balanced codes are fewer than the {n_train} training samples; use more models.")


def check_counterfactual(config: dict[str, Any], n_train: int, n_generated: int) -> None:
    """The counterfactual block (§4.5) must name methods that exist, sample fewer generated images
    than there are, and remove fewer training images than there are."""
    from diffattr.workflow.layout import RANDOM_CONTROL

    block = config.get("counterfactual")
    if not block or not block["methods"]:
        return
    for name in block["methods"]:
        if name == RANDOM_CONTROL:
            raise ConfigError(f"Config key 'counterfactual.methods' names '{RANDOM_CONTROL}', the random-removal control, "
                              f"which always runs; remove it.")
        if name not in config["methods"]:
            raise ConfigError(f"Config key 'counterfactual.methods' names '{name}', which is not a block under methods.")
    if "gen" not in config["evaluation"]["sets"]:
        raise ConfigError("Config key 'counterfactual' needs the generated set: add 'gen' to evaluation.sets.")
    if block["count"] >= n_generated:
        raise ConfigError(f"Config key 'counterfactual.count' is {block['count']}, but only {n_generated} images are "
                          f"generated; use fewer.")
    too_many = [k for k in block["ks"] if k >= n_train]
    if too_many:
        raise ConfigError(f"Config key 'counterfactual.ks' asks to remove {too_many[0]} of the {n_train} training "
                          f"images; use fewer.")


def check_report(config: dict[str, Any], set_sizes: dict[str, int]) -> None:
    """The report's attribution grids must name existing methods and samples of their set."""
    block = config["report"]
    for name in block.get("methods") or []:
        if name not in config["methods"]:
            raise ConfigError(f"Config key 'report.methods' names '{name}', which is not a block under methods.")
    size = set_sizes[block["set"]]
    outside = [s for s in block["samples"] if s >= size]
    if outside:
        raise ConfigError(f"Config key 'report.samples' names sample {outside[0]}, but the '{block['set']}' set has "
                          f"{size} images.")


def check_config(config: dict[str, Any], schema: dict[str, Any],
                 base: str | os.PathLike = ".") -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Every refusal possible before a job runs, in DAG-build order: the schema, the ablation sweeps'
    derived blocks (added to ``config`` in place) and the schema again, :func:`check_inputs`, the split
    sizes the data can supply, then the encoded pool, counterfactual and report blocks against those
    sizes. Returns (sweep points per sweep, rows per split)."""
    from diffattr.data.sizes import split_sizes
    from diffattr.sweeps import expand_sweeps

    validate(config, schema)
    sweeps = expand_sweeps(config)
    validate(config, schema)
    if config.get("attribute"):  # the user's model directory becomes the model block
        from diffattr.attribute import adopt_model

        adopt_model(config, base)
    check_inputs(config, base)
    sizes = split_sizes(config["data"], config["generate"])
    if sizes["val"] == 0 and not config.get("attribute"):
        raise ConfigError("Config key 'data.n_attributed' is 0, which only an attribute run allows (a benchmark "
                          "attributes its held-out images).")
    if config.get("attribute"):
        from diffattr.attribute import check_attribute

        check_attribute(config, sizes, base)
        return sweeps, sizes  # no subset pools, counterfactual or report samples of a benchmark set
    check_encoded_pool(config, sizes["train"])
    check_counterfactual(config, sizes["train"], sizes["gen"])
    check_report(config, sizes)
    return sweeps, sizes


def train_params(config: dict[str, Any], pool: str, subset: int) -> dict[str, Any]:
    """What a training job depends on: model, recipe and (for subset pools) its subset's definition."""
    params: dict[str, Any] = {**model_params(config), "train": config["train"], "pool": pool, "subset": int(subset)}
    if pool != "full":
        s = config["subsets"]
        params["subsets"] = {"alpha": s["alpha"], "seed": s["seed"], "stratify": s["stratify"]}
        if pool == "encoded":  # its masks are the columns of balanced codes for this many models
            params["subsets"]["count"] = s["pools"]["encoded"]["count"]
    return params


def pool_params(config: dict[str, Any], pool: str) -> dict[str, Any]:
    s = config["subsets"]
    return {"alpha": s["alpha"], "seed": s["seed"], "stratify": s["stratify"], "pool": pool,
            "count": s["pools"][pool]["count"]}


def base_pipeline(config: dict[str, Any]) -> str | None:
    """The text-to-image base pipeline directory: the config's local SD pipeline, else the one the
    ``pretrain_base`` job writes; None for the DDPM."""
    model = config["model"]
    if model_family(config) != "text_to_image":
        return None
    from diffattr.workflow.layout import Layout

    return model["text_to_image"].get("pipeline_path") or Layout(config["output_dir"]).base_pipeline


def model_params(config: dict[str, Any]) -> dict[str, Any]:
    """What a job needs to build, load or condition the model (:mod:`diffattr.models.family`)."""
    model = config["model"]
    if model_family(config) != "text_to_image":
        return {"unet": model["unet"], "scheduler": model["scheduler"]}
    return {"family": "text_to_image", "scheduler": model["scheduler"], "text_to_image": model["text_to_image"],
            "base": base_pipeline(config)}


def pretrain_params(config: dict[str, Any]) -> dict[str, Any]:
    """The ``pretrain_base`` job's params: the built pipeline's config, the recipe and every word its
    tokenizer must know (the fine-tuning captions' template and class names, and the prompts)."""
    model = config["model"]
    words = [model["text_to_image"].get("caption_template", DEFAULT_CAPTION_TEMPLATE), *(config["generate"].get("prompts") or [])]
    return {"scheduler": model["scheduler"], "text_to_image": model["text_to_image"],
            "pretrain": model.get("pretrain", {}), "words": words}
