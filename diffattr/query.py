"""``diffattr query``: explain a few new images with a finished run, without re-running the DAG.

The images are featurized with the run's model and the method's feature spec, scored against the
run's stored training features and kernel, τ(x, z) = φ(x)ᵀ(ΦᵀΦ + λI)⁻¹φ(z)·w(z) (docs/methods.md
§2.10–§2.13), and ranked by responsibility −s·τ (:mod:`diffattr.topk`). Exact: the same functions
as the score job. The i-th image given draws the (t, ε) of row i of the ``query`` split (the
``val`` stream, :data:`diffattr.noise.SPLIT_CODES`), so an image given first gets the scores the
batch run gave its folder's first image. λ: the method's ``chosen_lambda`` in an attribute run, the
select-pool choice for ``val`` in a benchmark run. Pixel methods need no model.

A run is named by its config files, or by its output directory alone: every run records its merged
config and working directory in ``{output_dir}/run.json`` when it starts (:func:`record_run`,
Snakefile ``onstart``), and :func:`run_config` reads it back.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.workflow.plan import Plan


RUN_RECORD = "run.json"
"""The file under ``output_dir`` that records a run's config (:func:`record_run`)."""


class QueryError(ValueError):
    """A query that cannot be answered, in one sentence."""


def record_run(output_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """Write ``{output_dir}/run.json``: the run's merged config as given and the directory its relative
    paths are relative to (the working directory), atomically."""
    import json

    from diffattr.atomic import atomic_path

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(output_dir) / RUN_RECORD) as tmp:
        tmp.write_text(json.dumps({"workdir": os.getcwd(), "config": config}, indent=1, sort_keys=True))


def run_config(run_dir: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """``(config, workdir)`` of the run whose output directory is ``run_dir``, from its ``run.json``;
    ``output_dir`` becomes ``run_dir`` (the run may have moved)."""
    import json

    record = Path(run_dir) / RUN_RECORD
    if not record.is_file():
        raise QueryError(f"'{run_dir}' has no {RUN_RECORD}, so it is not the output directory of a run that started "
                         f"(or it predates the record); name the run's config files with --config instead.")
    try:
        saved = json.loads(record.read_text())
        config, workdir = saved["config"], Path(saved["workdir"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise QueryError(f"'{record}' is not a run record ({error}).") from None
    return config | {"output_dir": str(Path(run_dir).resolve())}, workdir


@dataclass
class Answer:
    """The top-k table of the queried images, the grid PNGs written, and where the time went."""

    table: Any
    pngs: list[Path]
    seconds: dict[str, float]


def query(plan: Plan, method: str, files: list[str | os.PathLike], k: int = 10,
          png_dir: str | os.PathLike | None = None, prompts: list[str] | None = None) -> Answer:
    """Top-k and bottom-k training images of each image in ``files`` for ``method`` of the run
    ``plan`` describes (its outputs must exist), and one grid PNG per image under ``png_dir``.
    A text-to-image model's images need their ``prompts`` (one for all, or one per image)."""
    from diffattr.attribute import check_query_images, read_query_images
    from diffattr.data.sizes import image_shape
    from diffattr.methods.registry import method_kind

    if method not in plan.methods:
        raise QueryError(f"Method '{method}' is not one the run evaluated ({', '.join(plan.methods)}).")
    kind = method_kind(plan.method(method))
    if "kernel_models" not in kind.needs and kind.kind != "pixel":
        raise QueryError(f"diffattr query answers kernel (TRAK family) and pixel methods; '{method}' is {kind.kind}.")
    shape = image_shape(plan.config["data"])
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise QueryError(f"Image '{path}' does not exist.")
    try:
        check_query_images(paths, shape)
    except ValueError as error:
        raise QueryError(str(error)) from None
    images = read_query_images(paths, shape[2])
    if plan.base and not prompts:
        raise QueryError("A text-to-image model attributes an image with its prompt: give --prompt TEXT (once for "
                         "every image, or once per image).")
    if prompts and len(prompts) not in (1, len(paths)):
        raise QueryError(f"{len(prompts)} prompts for {len(paths)} images: give one for all, or one per image.")
    captions = None if not plan.base else list(prompts) * (len(paths) if len(prompts) == 1 else 1)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="diffattr-query-") as tmp:
        store = _image_store(Path(tmp), paths, images, captions)
        start = time.perf_counter()
        scores, sign = (_kernel_scores if "kernel_models" in kind.needs else _pixel_scores)(plan, method, store, seconds)
        seconds["score"] = time.perf_counter() - start - sum(seconds.values())
        return _answer(plan, method, scores, sign, paths, store, Path(tmp), k, png_dir, seconds)


def _image_store(tmp: Path, paths: list[Path], images: np.ndarray, captions: list[str] | None) -> str:
    from diffattr.data.imageset import ImageSet
    from diffattr.data.store import write_image_store

    store = str(tmp / "queries.zarr")
    write_image_store(store, {"query": ImageSet(images, np.zeros(len(images), dtype=np.int64),
                                                [str(p) for p in paths], ["query"], captions)})
    return store


def _split(plan: Plan) -> str:
    """The set whose stored inputs a query is scored against: "query" in an attribute run, else "val"."""
    return "query" if plan.attribute else "val"


def _kernel_scores(plan: Plan, method: str, store: str, seconds: dict[str, float]) -> tuple[np.ndarray, int]:
    """τ of the queries against each of the method's models, averaged (one model in an attribute run)."""
    from dataclasses import replace

    from diffattr.featurize import FeatureSpec, featurize
    from diffattr.jobs import device
    from diffattr.kernel import scores_block
    from diffattr.methods.registry import HELPS, MethodInputs
    from diffattr.methods.trak import TrakSettings, kernel_models
    from diffattr.models.ddpm import build_scheduler
    from diffattr.models.family import load_model

    settings = TrakSettings(**{k: v for k, v in plan.method(method).items() if k != "kind"})
    inputs = MethodInputs.of(plan.method_inputs(method, _split(plan)))
    for path in (*inputs.kernels, *inputs.train, *inputs.lambdas, *inputs.residuals):
        if not Path(path).exists():
            raise QueryError(f"The run has no '{path}'; finish it first (diffattr run / attribute).")
    spec_name = plan.method_specs(method)[0]
    spec = FeatureSpec.from_dict(plan.config["features"][spec_name])
    where, scores = device(), []
    # the score job's own kernel, factor at the chosen λ and w(z) per model; the queries are featurized here
    parts, _ = kernel_models(replace(inputs, queries=()), settings.normalize, _split(plan), settings.chosen_lambda,
                             settings.ensemble_scale)
    for (pool, subset, seed), (kernel, factor, train, _, weights) in zip(plan.method_models(method), parts, strict=True):
        t0 = time.perf_counter()
        model = load_model(plan.checkpoint(pool, subset, seed, plan.feature_step(spec_name)), plan.model, where)
        network_inputs, cond = model.inputs(store, "query")
        seconds["model"] = seconds.get("model", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        phi = featurize(model.network, network_inputs, np.arange(len(network_inputs)), "query", spec,
                        build_scheduler(plan.model["scheduler"]), where, cond=cond)
        seconds["featurize"] = seconds.get("featurize", 0.0) + time.perf_counter() - t0
        scores.append(scores_block(kernel, factor, train, phi) * weights)
    return np.mean(scores, axis=0).astype(np.float32), HELPS


def _pixel_scores(plan: Plan, method: str, store: str, seconds: dict[str, float]) -> tuple[np.ndarray, int]:
    """The pixel kind's scores of the queries (its scorer, on a store of the queries)."""
    from diffattr.methods.registry import HELPS, ScoreContext, load_scorer, method_kind

    block = plan.method(method)
    ctx = ScoreContext.from_params(block, {"data": plan.layout.data, "query_images": store}, "query")
    blocks = load_scorer(method_kind(block))(ctx)
    return np.asarray(blocks.block(0, blocks.n_queries), dtype=np.float32), HELPS


def _answer(plan: Plan, method: str, scores: np.ndarray, sign: int, paths: list[Path], store: str, tmp: Path,
            k: int, png_dir: str | os.PathLike | None, seconds: dict[str, float]) -> Answer:
    """The top-k table (as the batch run's top_attributions writes it) and the grid PNGs."""
    from diffattr.attribute import top_table
    from diffattr.scores import write_scores
    from diffattr.show import draw_attribution

    score_path = str(tmp / "scores.zarr")
    write_scores(score_path, len(scores), scores.shape[1], lambda a, b: scores[a:b], 256,
                 {"method": plan.method(method), "sign": sign, "set": "query"})
    table = top_table(score_path, plan.layout.metadata, [str(p) for p in paths], k)
    pngs = []
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(paths):
            png = Path(png_dir) / f"{method}_{path.stem}.png"
            draw_attribution(score_path, plan.layout.data, store, "query", method, "query", i, k, png)
            pngs.append(png)
    return Answer(table, pngs, seconds)
