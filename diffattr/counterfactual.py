"""Counterfactual evaluation: remove the most responsible training images, retrain, regenerate
(docs/methods.md §4.5 "Counterfactual evaluation (D-TRAK)", numbers in §5.4).

Protocol, for a seeded set of generated samples x (:func:`counterfactual_samples`, D-TRAK's
``train_test_split(range(n), test_size=count, random_state=seed)``, its test part):

1. **Removal set.** For each attribution method with raw scores τ(x, z) and LDS sign s (docs/methods.md
   §0, §4.4; :mod:`diffattr.methods.registry`), the LDS predicts the loss at x of a model trained on
   S as Σ_{z∈S} s·τ(x, z), so the training images most responsible for x — whose inclusion most
   lowers x's loss — are those with the largest responsibility −s·τ(x, z)
   (:func:`diffattr.scores.responsibility`): the largest τ for ``HELPS`` (s = −1; D-TRAK's "highest
   score") and the most negative τ for ``LOSS_UNITS`` (s = +1). R_k(x) = the k most responsible
   (ties: lower training index first; :func:`removal_set`). The control removes k training images
   drawn uniformly without replacement by ``default_rng([seed, sample, k])``
   (:func:`random_removal_set`), named :data:`RANDOM_CONTROL`.
2. **Retrain** from scratch on D \\ R_k(x) with the full model's recipe and seed
   (:func:`train_counterfactual`, one workflow job per (method, sample, k)).
3. **Regenerate** x with the identical initial noise x_T (the sample's recorded seed,
   :func:`diffattr.sample.initial_noise`) and the same DDIM sampler (``generate`` block: steps, η)
   (:func:`regenerate`).
4. **Measure**, per sample, between the original x and the regenerated x' (:func:`evaluate_counterfactual`):

   - pixel L2 ‖x − x'‖₂ over the flattened C·H·W pixels on the [−1, 1] scale (:func:`image_change`);
   - embedding cosine e(x)ᵀe(x') / (‖e(x)‖₂·‖e(x')‖₂) (:func:`embedding_cosine`), e the CLIP or
     DDPM-UNet encoder of :mod:`diffattr.methods.embedding` (D-TRAK: CLIP ViT-B/32 ``encode_image``);
   - the change of x's L_Simple, ΔL(x) = (1/P) Σ_p [ℓ(x, t_p, ε_p; θ') − ℓ(x, t_p, ε_p; θ)] over
     the ground truth's fixed (noise seed, t) pairs (docs/methods.md §4.3), θ the original and θ' the
     retrained model (the difference of :func:`mean_losses`). Removing helpful images should raise it (ΔL > 0).
5. **Report** mean and median over the samples per (method, k) (:func:`summary_table`). A better
   attribution gives a larger L2, a lower cosine and a larger ΔL than the random control; the
   paired differences to the control on the same samples, with a bootstrap CI over samples, say
   whether it does (:func:`paired_vs_control`).

Pixel-L2 scale. D-TRAK's ``03_counter_eval_l2`` notebooks (CIFAR-2, CelebA) load both images from
8-bit files (the generated PNG and the regenerated PIL image), map them to [−1, 1] with
``ToTensor`` + ``Normalize(0.5, 0.5)``, flatten them to 3·32·32 = 3072 values and take
``np.linalg.norm`` of the difference: the numbers of §5.4 (CIFAR-2: 5.51 / 6.44 / 9.46) are L2 on
the [−1, 1] scale of 8-bit-quantised images. We use the same: :func:`image_change` on [−1, 1]
floats, and :func:`evaluate_counterfactual` quantises the regenerated image to 8 bits (as the stored
generated set already is, :func:`diffattr.sample.generate_set`) before measuring. On [0, 1] the
values would be half of these, on [0, 255] 127.5 times these. ‖·‖₂ grows like sqrt(C·H·W), so only
equal resolutions compare (per-pixel RMS = L2 / sqrt(C·H·W); 8×8 gray digits have 64 values,
CIFAR 3072). Note: docs/methods.md §4.5 says "256² for ArtBench", but D-TRAK's ArtBench-2 notebook takes
the L2 between the SD VAE latents (``latent_dist.mode()``, 4·32·32 = 4096 values, unscaled), not
pixels; its 164–194 are latent-space distances, which this module does not reproduce.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from diffattr.atomic import atomic_path, write_csv
from diffattr.integrity import read_array
from diffattr.scores import open_score_store, responsibility
from diffattr.workflow.layout import RANDOM_CONTROL  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import torch

    from diffattr.methods.embedding import EmbeddingConfig


METRICS = ("pixel_l2", "embedding_cosine", "loss_change")
"""Per-sample metrics summarised by :func:`summary_table`."""


# ------------------------------------------------------------------------------------ what to remove


def counterfactual_samples(n_generated: int, count: int, seed: int) -> np.ndarray:
    """Indices of the evaluated generated samples: the test part of
    ``train_test_split(range(n_generated), test_size=count, random_state=seed)``, in its order
    (D-TRAK: 60 of 1000, random_state 42 for CIFAR-2, 0 for CelebA and ArtBench-2; §4.5 step 1)."""
    from sklearn.model_selection import train_test_split

    if not 0 < count < n_generated:
        raise ValueError(f"cannot pick {count} counterfactual samples out of {n_generated} generated images")
    _, chosen = train_test_split(range(n_generated), test_size=count, random_state=seed)
    return np.asarray(chosen, dtype=np.int64)


def removal_set(scores_row: np.ndarray, sign: int, k: int) -> np.ndarray:
    """R_k(x): indices of the ``k`` training images with the largest responsibility −sign·τ
    (:func:`diffattr.scores.responsibility`), most responsible first, ties → lower index first."""
    row = np.asarray(scores_row)
    if row.ndim != 1:
        raise ValueError(f"a score row must be one-dimensional, got shape {row.shape}")
    if not 0 <= k <= len(row):
        raise ValueError(f"cannot remove {k} of {len(row)} training images")
    resp = responsibility(row, sign)
    return np.argsort(-resp, kind="stable")[:k].astype(np.int64)


def random_removal_set(n_train: int, k: int, seed: int, sample: int) -> np.ndarray:
    """The random control's R_k: ``k`` distinct training indices drawn without replacement by
    ``np.random.default_rng([seed, sample, k])``, sorted; a pure function of (n_train, k, seed, sample)."""
    if not 0 <= k <= n_train:
        raise ValueError(f"cannot remove {k} of {n_train} training images")
    drawn = np.random.default_rng([seed, sample, k]).choice(n_train, size=k, replace=False)
    return np.sort(drawn).astype(np.int64)


def removal_mask(n_train: int, removed: np.ndarray) -> np.ndarray:
    """Boolean keep-mask (n_train,): False exactly at the ``removed`` indices (distinct, in range)."""
    removed = np.asarray(removed, dtype=np.int64).reshape(-1)
    if removed.size and (removed.min() < 0 or removed.max() >= n_train):
        raise ValueError(f"removed indices must lie in 0..{n_train - 1}")
    if len(np.unique(removed)) != len(removed):
        raise ValueError("removed indices must be distinct")
    keep = np.ones(n_train, dtype=bool)
    keep[removed] = False
    return keep


def format_removed(removed: np.ndarray) -> str:
    """A removal set as the plan's space-separated string."""
    return " ".join(str(int(i)) for i in np.asarray(removed).reshape(-1))


def parse_removed(text: Any) -> np.ndarray:
    """Inverse of :func:`format_removed` (an empty or missing cell is the empty set)."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return np.zeros(0, dtype=np.int64)
    return np.asarray(str(text).split(), dtype=np.int64)


def read_method_scores(path: str | os.PathLike) -> tuple[Any, int]:
    """(the lazily read ``scores`` array, the LDS sign) of a checked score store
    (:func:`diffattr.scores.open_score_store`: missing or damaged stores are one sentence)."""
    root = open_score_store(path)
    if "sign" not in root.attrs:
        raise ValueError(f"the score store {path} records no sign")
    return root["scores"], int(root.attrs["sign"])


def removal_for(scores_path: str | os.PathLike | None, n_train: int, sample: int, k: int,
                seed: int | None = None) -> np.ndarray:
    """R_k of generated sample ``sample`` (§4.5 step 2): :func:`removal_set` of its row of the score
    store at ``scores_path`` (attributed set ``gen``), or, with no store, the random control's
    :func:`random_removal_set` drawn with ``seed``."""
    if scores_path is None:
        if seed is None:
            raise ValueError("the random-removal control needs a seed")
        return random_removal_set(n_train, k, seed, sample)
    scores, sign = read_method_scores(scores_path)
    if scores.shape[1] != n_train:
        raise ValueError(f"the score store {scores_path} has {scores.shape[1]} training columns, but the training "
                         f"set has {n_train} images")
    if not 0 <= sample < scores.shape[0]:
        raise ValueError(f"sample {sample} is outside the {scores.shape[0]} generated rows of {scores_path}")
    return removal_set(read_array(scores_path, scores, sample, "scores"), sign, k)


# --------------------------------------------------------------------------------------- retraining


def train_without(model: Any, inputs: np.ndarray, cond: np.ndarray | None, removed: np.ndarray,
                  train_config: dict[str, Any], seed: int, checkpoint_path: str | Sequence[str], log_table: str,
                  resume_dir: str) -> pd.DataFrame:
    """Retrain ``model`` (fresh, :func:`diffattr.models.family.fresh_model` with ``seed``) from scratch
    on its training inputs (N, C, h, w) and conditions minus ``removed``, with
    :func:`diffattr.train.train` and the full model's recipe ``train_config`` (§4.5 step 3). A single
    ``checkpoint_path`` saves the final weights only (``checkpoint_fractions`` → [1.0]; saving does not
    change the weights); a list passes through."""
    import diffattr.train as training

    keep = removal_mask(len(inputs), removed)
    train_config = dict(train_config)
    if isinstance(checkpoint_path, (str, os.PathLike)):
        train_config["checkpoint_fractions"] = [1.0]
        checkpoints = [str(checkpoint_path)]
    else:
        checkpoints = [str(p) for p in checkpoint_path]
    return training.train(model, inputs[keep], None if cond is None else cond[keep], train_config, seed, checkpoints,
                          log_table, resume_dir)


def train_counterfactual(data_store: str, scores_path: str | None, params: dict[str, Any], run: dict[str, Any],
                         model_path: str, removed_path: str, log_table: str, resume_dir: str,
                         device: str = "cpu") -> np.ndarray:
    """counterfactual_train: remove R_k (:func:`removal_for`) of ``run`` (``method``, ``sample``,
    ``k``, ``model_seed`` of the retraining and, for the control only, ``seed`` of its draws) from the training set
    of ``data_store``, retrain with :func:`train_without`, and write the removed indices, most
    responsible first, as a one-row table (``method``, ``sample``, ``k``, ``n_train``, ``removed``)."""
    from diffattr.models.family import fresh_model

    seed = int(run["model_seed"])
    model = fresh_model(params, seed, device)
    inputs, cond = model.inputs(data_store, "train")
    removed = removal_for(scores_path, len(inputs), int(run["sample"]), int(run["k"]), run.get("seed"))
    train_without(model, inputs, cond, removed, params["train"], seed, model_path, log_table, resume_dir)
    write_csv(pd.DataFrame([{"method": run["method"], "sample": int(run["sample"]), "k": int(run["k"]),
                               "n_train": len(inputs), "removed": format_removed(removed)}]), removed_path)
    return removed


# ------------------------------------------------------------------------------------------ metrics


def image_change(original: np.ndarray, regenerated: np.ndarray) -> np.ndarray:
    """Per-image pixel L2 ‖x − x'‖₂ (n,) float64 over the flattened C·H·W values of float images
    on the [−1, 1] scale (D-TRAK's scale; see the module docstring)."""
    a, b = np.asarray(original, dtype=np.float64), np.asarray(regenerated, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return np.sqrt(((a - b) ** 2).reshape(len(a), -1).sum(axis=1))


def embedding_cosine(encoder_embed_original: np.ndarray, encoder_embed_regen: np.ndarray) -> np.ndarray:
    """Per-pair cosine e·e' / (‖e‖₂·‖e'‖₂) (n,) float64 of two (n, d) embedding arrays (norms
    clipped at 1e-12, as :func:`diffattr.methods.embedding.similarity_matrix` does)."""
    a = np.asarray(encoder_embed_original, dtype=np.float64)
    b = np.asarray(encoder_embed_regen, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embeddings must be two (n, d) arrays of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1).clip(1e-12) * np.linalg.norm(b, axis=1).clip(1e-12)
    return (a * b).sum(axis=1) / norms


def mean_losses(model: torch.nn.Module, images: np.ndarray, split: str, pairs: np.ndarray, abar: torch.Tensor,
                batch_size: int, device: str = "cpu", cond: np.ndarray | None = None) -> np.ndarray:
    """(n,) float64: :func:`diffattr.measure.measure_losses` averaged over the (noise seed, t) pairs."""
    from diffattr.measure import measure_losses

    return measure_losses(model, images, split, pairs, abar, batch_size, device, cond).astype(np.float64).mean(axis=0)


# ---------------------------------------------------------------------------------- regenerating


def regenerate(model: Any, params: dict[str, Any], seeds: np.ndarray, device: str = "cpu",
               prompts: list[str] | None = None) -> np.ndarray:
    """Float images (n, C, H, W) in [−1, 1] from the per-image initial noise of ``seeds`` with the
    ``generate`` block's DDIM sampler (steps, η, batch size) and ``params["scheduler"]`` (§4.5 step 4);
    each image depends on its own seed (and, for a text-to-image model, its prompt) only. ``model``: a
    :class:`diffattr.models.family.Model`."""
    from diffattr.sample import ddim_trajectory, generate_config

    cfg = generate_config(params["generate"])
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    return ddim_trajectory(model.network, params["scheduler"], seeds, cfg.steps, cfg.eta, cfg.batch_size, device,
                           record=False, cond=model.condition(prompts), to_images=model.to_images)[0]


def as_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, C) → float32 (n, C, H, W) in [−1, 1]; float images are taken as already
    (n, C, H, W) in [−1, 1]."""
    from diffattr.data.store import to_model_range

    images = np.asarray(images)
    if images.dtype == np.uint8:
        return to_model_range(images)
    return images.astype(np.float32)


def quantized(images: np.ndarray) -> np.ndarray:
    """Float images in [−1, 1] rounded to 8 bits and back, as a PNG save and reload would (§7.6)."""
    from diffattr.data.store import to_model_range, to_uint8

    return to_model_range(to_uint8(images))


@dataclass(frozen=True)
class Original:
    """What every retrained model of one evaluation job is compared with: the original model (and its
    checkpoint path) and the embedding encoder (None: no cosine), each loaded once."""

    model: Any
    path: str
    encoder_cfg: EmbeddingConfig | None
    encoder: Any


def load_original(original_model_path: str, params: dict[str, Any], encoder_cfg: EmbeddingConfig | None,
                  device: str = "cpu") -> Original:
    """The original model (:func:`diffattr.models.family.load_model`) and the encoder of
    ``encoder_cfg`` (its device replaced by ``device``; a ``ddpm`` encoder uses
    ``params["unet"]``/``["scheduler"]``)."""
    from diffattr.methods.embedding import load_encoder
    from diffattr.models.family import load_model

    model = load_model(original_model_path, params, device)
    if encoder_cfg is None:
        return Original(model, original_model_path, None, None)
    cfg = replace(encoder_cfg, device=device)
    return Original(model, original_model_path, cfg, load_encoder(cfg, params.get("unet"), params.get("scheduler")))


def evaluate_counterfactual(original_model_path: str, retrained_model_path: str, sample_seeds: np.ndarray,
                            sample_images: np.ndarray, params: dict[str, Any], encoder_cfg: EmbeddingConfig | None,
                            device: str = "cpu") -> dict[str, np.ndarray]:
    """Metrics of one retrained model for its generated sample(s), each an (n,) array:
    ``pixel_l2`` (:func:`image_change`), ``embedding_cosine`` (:func:`embedding_cosine`; NaN when
    ``encoder_cfg`` is None), ``loss_original``, ``loss_retrained`` and ``loss_change``
    (:func:`mean_losses` of both models on the ``ground_truth`` block's pairs, split ``gen``).

    ``sample_images`` are the stored generated images (uint8 (n, H, W, C), or float (n, C, H, W) in
    [−1, 1]) made from ``sample_seeds`` by the original model. They are re-made from those seeds with
    the original model first, and a mismatch of more than one 8-bit level (another model or sampler)
    raises ``ValueError``. The regenerated images are quantised to 8 bits before the pixel and
    embedding comparisons, as the stored ones are (D-TRAK compares 8-bit files). The loss draws ε
    are those of split ``gen`` at each sample's *position* in ``sample_images`` (what
    :func:`diffattr.measure.measure_losses` keys them by), identical for both models but not the
    ground-truth measurement's draws for that generated index. ``encoder_cfg``'s
    device is replaced by ``device``; a ``ddpm`` encoder uses ``params["unet"]``/``["scheduler"]``."""
    from diffattr.models.family import load_model

    original = load_original(original_model_path, params, encoder_cfg, device)
    retrained = load_model(retrained_model_path, params, device)
    return compare_with_original(original, retrained, sample_seeds, sample_images, params, device)


def compare_with_original(original: Original, retrained_model: Any, sample_seeds: np.ndarray,
                          sample_images: np.ndarray, params: dict[str, Any], device: str = "cpu",
                          prompts: list[str] | None = None) -> dict[str, np.ndarray]:
    """:func:`evaluate_counterfactual` with the original side already loaded (:func:`load_original`);
    models are :class:`diffattr.models.family.Model`. A text-to-image sample is regenerated from its
    ``prompts`` entry and its loss is measured on its VAE latent with that prompt."""
    from diffattr.ground_truth import GroundTruthConfig
    from diffattr.methods.embedding import embed
    from diffattr.models.ddpm import alphas_cumprod

    seeds = np.asarray(sample_seeds, dtype=np.int64).reshape(-1)
    images = as_model_range(sample_images)
    if len(images) != len(seeds):
        raise ValueError(f"{len(seeds)} sample seeds but {len(images)} sample images")
    rerun = quantized(regenerate(original.model, params, seeds, device, prompts))
    if rerun.shape != images.shape or np.abs(rerun - images).max() > 1.5 / 127.5:
        raise ValueError(f"the original model {original.path} does not regenerate the given samples from "
                         f"their seeds (was the generated set made by another model or sampler?)")
    regenerated = quantized(regenerate(retrained_model, params, seeds, device, prompts))

    gt = GroundTruthConfig.from_dict(params["ground_truth"])
    abar = alphas_cumprod(params["scheduler"])
    pairs = gt.pairs(len(abar))
    inputs = original.model.encode(images)
    before = mean_losses(original.model.network, inputs, "gen", pairs, abar, gt.batch_size, device,
                         original.model.condition(prompts))
    after = mean_losses(retrained_model.network, inputs, "gen", pairs, abar, gt.batch_size, device,
                        retrained_model.condition(prompts))

    if original.encoder is None:
        cosine = np.full(len(seeds), np.nan)
    else:
        cfg, encoder = original.encoder_cfg, original.encoder
        cosine = embedding_cosine(embed(images, cfg, encoder=encoder), embed(regenerated, cfg, encoder=encoder))
    return {
        "pixel_l2": image_change(images, regenerated),
        "embedding_cosine": cosine,
        "loss_original": before,
        "loss_retrained": after,
        "loss_change": after - before,
    }


def evaluate_runs(original_model_path: str, runs: Sequence[tuple[str, str]], generated_store: str,
                  generated_table: str, params: dict[str, Any], device: str = "cpu") -> pd.DataFrame:
    """counterfactual_evaluate: one row per retrained model — (checkpoint, removed table of
    :func:`train_counterfactual`) in ``runs`` — with its ``method``, ``sample``, ``k``, ``seed`` (the
    sample's initial-noise seed from ``generated_table``) and the metrics of
    :func:`evaluate_counterfactual` on the stored generated image. ``params["embedding"]`` (a
    :class:`~diffattr.methods.embedding.EmbeddingConfig` mapping; a ``ddpm`` encoder without a path
    uses the original model) sets the cosine's encoder; None skips it."""
    from diffattr.data.store import read_images
    from diffattr.methods.embedding import EmbeddingConfig
    from diffattr.models.family import load_model, split_captions

    embedding = params.get("embedding")
    encoder_cfg = None if embedding is None else EmbeddingConfig.from_params({"path": original_model_path, **embedding})
    original = load_original(original_model_path, params, encoder_cfg, device)  # once, not per retrained model

    seeds = pd.read_csv(generated_table).set_index("index")["seed"]
    generated = read_images(generated_store, "gen")
    prompts = split_captions(generated_store, "gen", params) if original.model.components is not None else None
    rows = []
    for model_path, removed_path in runs:
        run = pd.read_csv(removed_path).iloc[0]
        sample = int(run["sample"])
        metrics = compare_with_original(original, load_model(model_path, params, device),
                                        np.array([seeds[sample]]), generated[sample : sample + 1], params, device,
                                        None if prompts is None else prompts[sample : sample + 1])
        rows.append({"method": run["method"], "sample": sample, "k": int(run["k"]), "seed": int(seeds[sample]),
                     **{name: float(values[0]) for name, values in metrics.items()}})
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------- tables


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per (method, k): ``n`` (rows) and the mean and median of each metric of :data:`METRICS`
    present in ``results`` (NaNs skipped), as ``{metric}_mean`` / ``{metric}_median``. Rows are
    ordered like §4.5/§5.4's table: the random control first, then the methods in order of first
    appearance, k ascending within a method."""
    missing = {"method", "k"} - set(results.columns)
    if missing:
        raise ValueError(f"counterfactual results lack the columns {sorted(missing)}")
    metrics = [m for m in METRICS if m in results.columns]
    order = list(dict.fromkeys(results["method"]))
    order = ([RANDOM_CONTROL] if RANDOM_CONTROL in order else []) + [m for m in order if m != RANDOM_CONTROL]
    rows = []
    for method in order:
        group = results[results["method"] == method]
        for k in sorted(group["k"].unique()):
            part = group[group["k"] == k]
            row: dict[str, Any] = {"method": method, "k": int(k), "n": len(part)}
            for metric in metrics:
                values = part[metric].to_numpy(dtype=np.float64)
                finite = values[~np.isnan(values)]
                row[f"{metric}_mean"] = float(finite.mean()) if finite.size else np.nan
                row[f"{metric}_median"] = float(np.median(finite)) if finite.size else np.nan
            rows.append(row)
    columns = ["method", "k", "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "median")]
    return pd.DataFrame(rows, columns=columns)


def paired_vs_control(results: pd.DataFrame, resamples: int, confidence: float, seed: int) -> pd.DataFrame:
    """Per (method, k) against :data:`RANDOM_CONTROL` at the same k on the same samples: for each
    metric of :data:`METRICS`, the mean paired difference d̄ = mean_x [m(x) − m_random(x)], its
    percentile bootstrap CI over samples (``resamples`` draws of the samples with replacement,
    ``default_rng(seed)``) and ``{metric}_wins`` — the fraction of samples where the method moved the
    image further than the control (larger L2 or ΔL, lower cosine). Methods with no control rows at
    their k are left out."""
    control = results[results["method"] == RANDOM_CONTROL]
    metrics = [m for m in METRICS if m in results.columns]
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    rows = []
    for (method, k), group in results[results["method"] != RANDOM_CONTROL].groupby(["method", "k"], sort=False):
        paired = group.merge(control[control["k"] == k], on="sample", suffixes=("", "_control"))
        if paired.empty:
            continue
        picks = rng.integers(0, len(paired), size=(resamples, len(paired)))
        row: dict[str, Any] = {"method": method, "k": int(k), "n": len(paired)}
        for metric in metrics:
            diff = (paired[metric] - paired[f"{metric}_control"]).to_numpy(dtype=np.float64)
            means = diff[picks].mean(axis=1)
            further = diff < 0 if metric == "embedding_cosine" else diff > 0
            row[f"{metric}_diff"] = float(diff.mean())
            row[f"{metric}_ci_low"] = float(np.quantile(means, alpha))
            row[f"{metric}_ci_high"] = float(np.quantile(means, 1.0 - alpha))
            row[f"{metric}_wins"] = float(further.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame, paired: pd.DataFrame) -> str:
    """§5.4's table — mean (median) per (method, k) of pixel L2 ↑, embedding cosine ↓ and ΔL_Simple ↑
    — then each method's paired difference to the random control with its CI and win fraction (a
    metric that was not measured, e.g. the cosine without an encoder, is left blank)."""
    def cell(mean: float, median: float, digits: int) -> str:
        return "" if np.isnan(mean) else f"{mean:.{digits}f} ({median:.{digits}f})"

    lines = ["| method | k | samples | pixel L2 ↑ | embedding cosine ↓ | ΔL_Simple ↑ |", "|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.method} | {r.k} | {r.n} | {cell(r.pixel_l2_mean, r.pixel_l2_median, 3)} | "
                     f"{cell(r.embedding_cosine_mean, r.embedding_cosine_median, 4)} | "
                     f"{cell(r.loss_change_mean, r.loss_change_median, 5)} |")
    if len(paired):
        lines += ["", f"Paired with {RANDOM_CONTROL} on the same samples: mean difference [bootstrap CI] (share of "
                      "samples changed more than by the control).", "",
                  "| method | k | samples | Δ pixel L2 | Δ embedding cosine | Δ ΔL_Simple |", "|---|---|---|---|---|---|"]
        for r in paired.to_dict("records"):
            cells = ["" if np.isnan(r[f"{m}_diff"]) else
                     f"{r[f'{m}_diff']:+.4g} [{r[f'{m}_ci_low']:+.3g}, {r[f'{m}_ci_high']:+.3g}] ({r[f'{m}_wins']:.0%})"
                     for m in METRICS]
            lines.append(f"| {r['method']} | {r['k']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gather(tables: Sequence[str], results_path: str, summary_path: str, markdown_path: str, resamples: int,
           confidence: float, seed: int) -> pd.DataFrame:
    """counterfactual_table: concatenate the per-method result tables into ``results_path`` (one row
    per method, sample and k), and write :func:`summary_table` next to :func:`paired_vs_control`'s
    columns as ``summary_path`` and :func:`summary_markdown` as ``markdown_path``."""
    results = pd.concat([pd.read_csv(p) for p in tables], ignore_index=True)
    results = results.sort_values(["method", "k", "sample"], kind="stable").reset_index(drop=True)
    summary = summary_table(results)
    paired = paired_vs_control(results, resamples, confidence, seed)
    write_csv(results, results_path)
    write_csv(summary.merge(paired.drop(columns="n"), on=["method", "k"], how="left"), summary_path)
    with atomic_path(markdown_path) as tmp:
        tmp.write_text(summary_markdown(summary, paired))
    return results
