"""Attribute your own model: the config checks and the query-folder job of an ``attribute`` run
(README "Attribute your own model").

An attribute run points the workflow at a trained diffusers model (:mod:`diffattr.models.diffusers_dir`),
its training data (the ``data`` block, any source) and a folder of images to explain. It reuses the
benchmark's stages (featurize, kernel, score) on that model; it trains nothing and measures no ground
truth, so only kinds that need no retrained models run, and a kernel method takes its λ from
``chosen_lambda``. Each method's scores end in a top-k table (:mod:`diffattr.topk`).

Torch-free: the DAG imports it (images are only opened, with Pillow, to check them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RETRAINED = {"retrain_truth": "the retrain pool's models", "encoded_models": "the encoded pool's models",
             "select_truth": "the select pool's models and ground truth"}
"""Needs an attribute run cannot meet (it trains no model), and what they stand for."""


def query_files(folder: str | os.PathLike) -> list[Path]:
    """The PNG/JPEG files of a query folder (not recursive), sorted by name: the queries' order."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"Config key 'attribute.queries' points at '{folder}', which is not a directory.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"Config key 'attribute.queries' points at '{folder}', which holds no PNG or JPEG image.")
    return files


def check_query_images(files: list[Path], shape: tuple[int, int, int]) -> None:
    """Every query image decodes and has the data's H × W (its colour is converted to the data's
    channels: gray or RGB), refused in one sentence naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    height, width, _ = shape
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()  # decodes every pixel: a truncated or garbled file fails here
                size = image.size
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ConfigError(f"Query image '{file}' cannot be decoded ({error}).") from None
        if size != (width, height):
            raise ConfigError(f"Query image '{file}' is {size[0]}×{size[1]} but the model and the data are "
                              f"{width}×{height}; resize the queries to the training images' size.")


def read_query_images(files: list[Path], channels: int) -> np.ndarray:
    """(n, H, W, C) uint8 images of the query files, converted to gray (C = 1) or RGB (C = 3)."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    images = []
    for file in files:
        with Image.open(file) as image:
            array = np.asarray(image.convert(mode), dtype=np.uint8)
        images.append(array[..., None] if channels == 1 else array)
    return np.stack(images)


def adopt_model(config: dict[str, Any], base: str | os.PathLike = ".") -> None:
    """The user's model directory read and checked against the data (resolution, channels: one
    sentence naming the key or file), then made the run's model block, in place: a DDPM's UNet and
    scheduler config (:mod:`diffattr.models.diffusers_dir`), or for ``model.family: text_to_image``
    the SD pipeline as ``pipeline_path`` with the LoRA file's adapter settings and the scheduler
    (:mod:`diffattr.models.pipeline_dir`)."""
    from diffattr.data.sizes import image_shape
    from diffattr.models.diffusers_dir import check_against_data, check_sampler, read_model_dir
    from diffattr.models.pipeline_dir import check_pipeline_against_data, is_pipeline_dir, read_pipeline_dir
    from diffattr.models.weights import ModelDirectoryError

    block, model = config["attribute"], config["model"]
    shape = image_shape(config["data"], base)
    path = Path(base, block["model"])
    text_to_image = model.get("family", "ddpm") == "text_to_image"
    try:
        if text_to_image:
            read = read_pipeline_dir(path, Path(base, block["lora"]) if block.get("lora") else None)
            check_pipeline_against_data(read, shape)
        else:
            if is_pipeline_dir(path):
                raise ModelDirectoryError(f"Model directory '{path}' is a text-to-image pipeline; set model.family: "
                                          f"text_to_image and name its LoRA weights in attribute.lora.")
            if block.get("lora"):
                raise ModelDirectoryError("attribute.lora names LoRA weights, which only a text-to-image model "
                                          "(model.family: text_to_image) takes.")
            read = read_model_dir(path)
            check_against_data(read, shape)
        if block.get("generate"):  # the DDIM sampler must honour the model's scheduler settings
            check_sampler(read)
    except ValueError as error:
        raise ConfigError(f"Config key 'attribute.model': {error}") from None
    model["scheduler"] = read.scheduler_config
    if text_to_image:
        model["text_to_image"] = {**model["text_to_image"], "pipeline_path": str(path), "lora": read.lora}
    else:
        model["unet"] = read.unet_config
    fractions = [adopt_checkpoint(config, i, read, base) for i in range(len(block.get("checkpoints") or []))]
    config["train"]["checkpoint_fractions"] = sorted({*fractions, 1.0})  # what feature specs may name


def adopt_checkpoint(config: dict[str, Any], i: int, final: Any, base: str | os.PathLike = ".") -> float:
    """The i-th entry of ``attribute.checkpoints`` read and checked to be the final model's architecture
    (a DDPM directory with the same UNet config; a LoRA file of the same adapter on the same pipeline);
    returns its fraction of training."""
    from diffattr.models.diffusers_dir import read_model_dir
    from diffattr.models.pipeline_dir import read_pipeline_dir

    entry = config["attribute"]["checkpoints"][i]
    key = f"attribute.checkpoints[{i}]"
    try:
        if config["model"].get("family", "ddpm") == "text_to_image":
            same = read_pipeline_dir(final.path, Path(base, entry["model"])).lora == final.lora
        else:
            read = read_model_dir(Path(base, entry["model"]))
            same = read.unet_config == final.unet_config and read.scheduler_config == final.scheduler_config
    except ValueError as error:
        raise ConfigError(f"Config key '{key}': {error}") from None
    if not same:
        raise ConfigError(f"Config key '{key}' names '{entry['model']}', whose architecture or noise schedule is not "
                          f"attribute.model's; every checkpoint must be the same model at another step.")
    fractions = [e["fraction"] for e in config["attribute"]["checkpoints"]]
    if fractions.count(entry["fraction"]) > 1:
        raise ConfigError(f"Config key '{key}.fraction' {entry['fraction']} is given twice.")
    return float(entry["fraction"])


def check_attribute(config: dict[str, Any], sizes: dict[str, int], base: str | os.PathLike = ".") -> None:
    """An attribute run's block, before any job (one sentence naming the key or file each), after
    :func:`adopt_model`: the query folder (every image decodable and of the data's size; prompts in
    its caption file for a text-to-image model) and its methods (defined; no kind that needs
    retrained models; a kernel method on the one model with ``chosen_lambda``; feature specs on
    the final checkpoint, the only one a user's model has). ``sizes["query"]`` becomes the number
    of query images."""
    from diffattr.data.captions import captions_for
    from diffattr.data.sizes import image_shape

    block = config["attribute"]
    if not block.get("queries") and not block.get("generate"):
        raise ConfigError("Config key 'attribute' names no images to explain: set 'attribute.queries' (a folder) "
                          "or 'attribute.generate: true'.")
    if block.get("queries"):
        folder = Path(base, block["queries"])
        files = query_files(folder)
        check_query_images(files, image_shape(config["data"], base))
        prompts = captions_for(folder, files)
        if prompts is None and config["model"].get("family", "ddpm") == "text_to_image":
            raise ConfigError(f"Config key 'attribute.queries' points at '{folder}', which has no metadata.jsonl or "
                              f"metadata.csv giving each image its prompt (file_name, text); a text-to-image model "
                              f"is attributed with the prompt.")
        sizes["query"] = len(files)
    for name in block["methods"]:
        check_attribute_method(config, name, base)


def benchmark_lambda(name: str, source: dict[str, Any], base: str | os.PathLike = ".") -> float:
    """The λ a finished benchmark run's select pool chose for ``source["set"]`` (default val) of its
    method ``source["method"]`` (default ``name``) on the full model: the ``chosen`` row of its λ
    table (``lambda/{method}/full/0/seed0.csv``, written by select_lambda,
    :func:`diffattr.methods.trak.select_lambda`); one sentence naming the file otherwise."""
    import pandas as pd

    from diffattr.workflow.layout import Layout

    method, split = source.get("method", name), source.get("set", "val")
    path = Path(base, Layout(source["run"]).lambda_curve.format(method=method, pool="full", subset=0, seed=0))
    key = f"methods.{name}.lambda_from"
    if not path.is_file():
        raise ConfigError(f"Config key '{key}' names the run '{source['run']}', which has no λ table '{path}' (its "
                          f"select_lambda job for method '{method}' has not run).")
    curve = pd.read_csv(path)
    chosen = curve[(curve["pool"] == "select") & (curve["set"] == split) & curve["chosen"].astype(bool)]
    if len(chosen) != 1:
        raise ConfigError(f"Config key '{key}': the λ table '{path}' has no select-pool choice for the {split} set.")
    return float(chosen["lambda"].iloc[0])


def check_attribute_method(config: dict[str, Any], name: str, base: str | os.PathLike = ".") -> None:
    """One method of an attribute run (see :func:`check_attribute`)."""
    from diffattr.methods.registry import method_kind

    key = f"attribute.methods: '{name}'"
    if name not in config["methods"]:
        raise ConfigError(f"Config key '{key}' names no block under 'methods'.")
    method = config["methods"][name]
    kind = method_kind(method)
    for need, what in RETRAINED.items():
        if need in kind.needs:
            raise ConfigError(f"Config key 'methods.{name}' (kind {kind.kind}) needs {what}, which an attribute run "
                              f"does not train; use it in a benchmark run.")
    if method.get("query") == "journey" and not config["attribute"].get("generate"):
        raise ConfigError(f"Config key 'methods.{name}' is Journey-TRAK, which explains generated samples only; "
                          f"set 'attribute.generate: true'.")
    if "kernel_models" in kind.needs:
        if method["models"] != {"pool": "full", "count": 1}:
            raise ConfigError(f"Config key 'methods.{name}.models' must be {{pool: full, count: 1}} in an attribute "
                              f"run: an ensemble needs retrained models.")
        if method.get("lambda_from"):
            if method.get("chosen_lambda") is not None:
                raise ConfigError(f"Config key 'methods.{name}' sets both chosen_lambda and lambda_from; keep one.")
            method["chosen_lambda"] = benchmark_lambda(name, method["lambda_from"], base)
        if method.get("chosen_lambda") is None:
            raise ConfigError(f"Config key 'methods.{name}.chosen_lambda' (or lambda_from) is required in an attribute "
                              f"run (no select pool chooses λ); config/attribute.yaml gives the digits benchmark's choices.")
    if kind.kind == "gradient" and method.get("weighting") == "learning_rate":
        raise ConfigError(f"Config key 'methods.{name}.weighting' is learning_rate, which needs the model's training "
                          f"recipe; an attribute run weighs its checkpoints equally (weighting: equal).")
    specs = method.get("features")  # their checkpoints are the user's: refused otherwise by feature_checkpoint_step
    for spec in [specs] if isinstance(specs, str) else (specs or []):
        if config["features"][spec].get("timestep_strategy") == "trained":
            raise ConfigError(f"Config key 'features.{spec}' replays the training draws (timestep_strategy: trained), "
                              f"which a user's model does not record.")


def prepare_queries(folder: str | os.PathLike, channels: int, store_path: str, table_path: str) -> int:
    """prepare_queries job: the query folder's images as the ``query`` split of an image store (and a
    table of their files, in order). Returns their number."""
    import pandas as pd

    from diffattr.atomic import atomic_path
    from diffattr.data.captions import captions_for
    from diffattr.data.imageset import ImageSet
    from diffattr.data.store import write_image_store

    files = query_files(folder)
    images = read_query_images(files, channels)
    prompts = captions_for(folder, files)
    n = len(images)
    write_image_store(store_path, {"query": ImageSet(images, np.zeros(n, dtype=np.int64), [str(f) for f in files],
                                                     ["query"], prompts)})
    table = pd.DataFrame({"query": np.arange(n), "file": [str(f) for f in files]})
    if prompts is not None:
        table["prompt"] = prompts
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    return n


def import_model(model_dir: str, lora: list[str] | None, params: dict[str, Any], out_path: str) -> None:
    """import_model job: the user's model as our checkpoint at ``out_path`` — every weight of a DDPM
    UNet (:func:`diffattr.models.diffusers_dir.import_unet`), or a text-to-image pipeline's LoRA
    tensors (:func:`diffattr.models.pipeline_dir.import_lora`) in the adapter ``params`` describes."""
    if lora:
        from diffattr.models.pipeline_dir import import_lora, read_pipeline_dir

        import_lora(read_pipeline_dir(model_dir, lora[0]), params, out_path)
    else:
        from diffattr.models.diffusers_dir import import_unet, read_model_dir

        import_unet(read_model_dir(model_dir), out_path)


def top_table(scores_path: str, metadata_path: str, query_files: list[str], k: int):
    """Each query's k most and k least responsible training images (responsibility −sign·τ,
    :mod:`diffattr.topk`, by blocks of the score store) as one table, with the training images'
    provenance, class and caption from the data's metadata table."""
    import pandas as pd

    from diffattr.topk import top_and_bottom, topk_table

    meta = pd.read_csv(metadata_path)
    train = meta[meta["split"] == "train"].sort_values("index")
    captions = train["caption"].tolist() if "caption" in train else None
    return topk_table(top_and_bottom(scores_path, k), query_files, train["source"].tolist(),
                      train["class_name"].tolist(), captions)


def top_attributions(scores_path: str, metadata_path: str, queries_path: str | None, k: int,
                     csv_path: str, parquet_path: str) -> None:
    """top_attributions job: :func:`top_table` of a score store (queries named by the query folder's
    table, or ``generated:i``), written as CSV and Parquet."""
    import pandas as pd

    from diffattr.scores import score_shape
    from diffattr.topk import write_topk_table

    n_queries, _ = score_shape(scores_path)
    files = (pd.read_csv(queries_path)["file"].tolist() if queries_path
             else [f"generated:{i}" for i in range(n_queries)])
    write_topk_table(top_table(scores_path, metadata_path, files, k), csv_path, parquet_path)
