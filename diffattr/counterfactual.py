"""Counterfactual evaluation: remove the most responsible training images, retrain, regenerate
(METHODS.md §4.5 "Counterfactual evaluation (D-TRAK)", numbers in §5.4).

Protocol, for a seeded set of generated samples x (:func:`counterfactual_samples`, D-TRAK's
``train_test_split(range(n), test_size=count, random_state=seed)``, its test part):

1. **Removal set.** For each attribution method with raw scores τ(x, z) and LDS sign s (METHODS.md
   §0, §4.4; :mod:`diffattr.methods.registry`), the LDS predicts the loss at x of a model trained on
   S as Σ_{z∈S} s·τ(x, z), so the training images most responsible for x — whose inclusion most
   lowers x's loss — are those with the largest responsibility −s·τ(x, z)
   (:func:`diffattr.show.responsibility`): the largest τ for ``HELPS`` (s = −1; D-TRAK's "highest
   score") and the most negative τ for ``LOSS_UNITS`` (s = +1). R_k(x) = the k most responsible
   (ties: lower training index first; :func:`removal_set`). The control removes k training images
   drawn uniformly without replacement by ``default_rng([seed, sample, k])``
   (:func:`random_removal_set`), named :data:`RANDOM_CONTROL`.
2. **Retrain** from scratch on D \\ R_k(x) with the full model's recipe and seed
   (:func:`train_without`; the workflow trains one model per plan row of
   :func:`counterfactual_jobs`).
3. **Regenerate** x with the identical initial noise x_T (the sample's recorded seed,
   :func:`diffattr.sample.initial_noise`) and the same DDIM sampler (``generate`` block: steps, η)
   (:func:`regenerate`).
4. **Measure**, per sample, between the original x and the regenerated x' (:func:`evaluate_counterfactual`):

   - pixel L2 ‖x − x'‖₂ over the flattened C·H·W pixels on the [−1, 1] scale (:func:`image_change`);
   - embedding cosine e(x)ᵀe(x') / (‖e(x)‖₂·‖e(x')‖₂) (:func:`embedding_cosine`), e the CLIP or
     DDPM-UNet encoder of :mod:`diffattr.methods.embedding` (D-TRAK: CLIP ViT-B/32 ``encode_image``);
   - the change of x's L_Simple, ΔL(x) = (1/P) Σ_p [ℓ(x, t_p, ε_p; θ') − ℓ(x, t_p, ε_p; θ)] over
     the ground truth's fixed (noise seed, t) pairs (METHODS.md §4.3), θ the original and θ' the
     retrained model (:func:`loss_change`). Removing helpful images should raise it (ΔL > 0).
5. **Report** mean and median over the samples per (method, k) (:func:`summary_table`). A better
   attribution gives a larger L2, a lower cosine and a larger ΔL than the random control.

Pixel-L2 scale. D-TRAK's ``03_counter_eval_l2`` notebooks (CIFAR-2, CelebA) load both images from
8-bit files (the generated PNG and the regenerated PIL image), map them to [−1, 1] with
``ToTensor`` + ``Normalize(0.5, 0.5)``, flatten them to 3·32·32 = 3072 values and take
``np.linalg.norm`` of the difference: the numbers of §5.4 (CIFAR-2: 5.51 / 6.44 / 9.46) are L2 on
the [−1, 1] scale of 8-bit-quantised images. We use the same: :func:`image_change` on [−1, 1]
floats, and :func:`evaluate_counterfactual` quantises the regenerated image to 8 bits (as the stored
generated set already is, :func:`diffattr.sample.generate_set`) before measuring. On [0, 1] the
values would be half of these, on [0, 255] 127.5 times these. ‖·‖₂ grows like sqrt(C·H·W), so only
equal resolutions compare (per-pixel RMS = L2 / sqrt(C·H·W); 8×8 gray digits have 64 values,
CIFAR 3072). Note: METHODS.md §4.5 says "256² for ArtBench", but D-TRAK's ArtBench-2 notebook takes
the L2 between the SD VAE latents (``latent_dist.mode()``, 4·32·32 = 4096 values, unscaled), not
pixels; its 164–194 are latent-space distances, which this module does not reproduce.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from diffattr.atomic import atomic_path
from diffattr.show import responsibility

if TYPE_CHECKING:
    import torch

    from diffattr.methods.embedding import EmbeddingConfig

RANDOM_CONTROL = "random"
"""Name of the random-removal control in plans and tables (so no attribution method may use it)."""

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
    (:func:`diffattr.show.responsibility`), most responsible first, ties → lower index first."""
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


def job_id(method: str, sample: int, k: int) -> str:
    """Stable name of one retraining job: ``{method}_s{sample}_k{k}``."""
    return f"{method}_s{int(sample)}_k{int(k)}"


def counterfactual_jobs(methods: dict[str, tuple[np.ndarray, int]], samples: np.ndarray, ks: Sequence[int],
                        n_train: int, seed: int) -> pd.DataFrame:
    """The retraining plan: one row per (method, sample, k) — :data:`RANDOM_CONTROL` first, then the
    methods in the given order — with columns ``job`` (:func:`job_id`), ``method``, ``sample``,
    ``k``, ``n_keep`` and ``removed`` (:func:`format_removed`, most responsible first).

    ``methods`` maps a method name to (its score matrix (attributed × train), e.g. a zarr array, and
    its LDS sign); row ``sample`` gives the sample's removal set. The control draws
    :func:`random_removal_set` with ``seed``."""
    if RANDOM_CONTROL in methods:
        raise ValueError(f"{RANDOM_CONTROL!r} names the random-removal control; rename the attribution method")
    samples = np.asarray(samples, dtype=np.int64).reshape(-1)
    if len(np.unique(samples)) != len(samples):
        raise ValueError("counterfactual samples must be distinct")
    rows = []
    for sample in samples:
        for k in ks:
            removed = random_removal_set(n_train, int(k), seed, int(sample))
            rows.append((RANDOM_CONTROL, int(sample), int(k), removed))
    for name, (scores, sign) in methods.items():
        if scores.shape[1] != n_train:
            raise ValueError(f"scores of {name!r} have {scores.shape[1]} training columns, expected {n_train}")
        for sample in samples:
            if not 0 <= sample < scores.shape[0]:
                raise ValueError(f"sample {sample} is outside the {scores.shape[0]} attributed rows of {name!r}")
            row = np.asarray(scores[int(sample)])
            for k in ks:
                rows.append((name, int(sample), int(k), removal_set(row, int(sign), int(k))))
    return pd.DataFrame(
        [{"job": job_id(m, s, k), "method": m, "sample": s, "k": k, "n_keep": n_train - len(r), "removed": format_removed(r)}
         for m, s, k, r in rows],
        columns=["job", "method", "sample", "k", "n_keep", "removed"],
    )


def read_method_scores(path: str | os.PathLike) -> tuple[Any, int]:
    """(the lazily read ``scores`` array, the LDS sign) of a score store (:mod:`diffattr.scores`),
    the pair :func:`counterfactual_jobs` takes per method."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    if "sign" not in root.attrs:
        raise ValueError(f"the score store {path} records no sign")
    return root["scores"], int(root.attrs["sign"])


# --------------------------------------------------------------------------------------- retraining


def train_without(data_images: np.ndarray, removed: np.ndarray, params: dict[str, Any], seed: int,
                  checkpoint_path: str | Sequence[str], log_table: str, resume_dir: str) -> pd.DataFrame:
    """Retrain from scratch on the uint8 training images (N, H, W, C) minus ``removed`` with
    :func:`diffattr.train.train` and the full model's recipe (``params``: ``unet``, ``scheduler``,
    ``train``) and ``seed`` (§4.5 step 3). A single ``checkpoint_path`` saves the final weights only
    (``checkpoint_fractions`` → [1.0]; saving does not change the weights); a list passes through."""
    import diffattr.train as training

    keep = removal_mask(len(data_images), removed)
    train_config = dict(params["train"])
    if isinstance(checkpoint_path, (str, os.PathLike)):
        train_config["checkpoint_fractions"] = [1.0]
        checkpoints = [str(checkpoint_path)]
    else:
        checkpoints = [str(p) for p in checkpoint_path]
    return training.train(data_images[keep], params["unet"], params["scheduler"], train_config, seed, checkpoints,
                          log_table, resume_dir)


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


def loss_change(original_model: torch.nn.Module, retrained_model: torch.nn.Module, images: np.ndarray, split: str,
                pairs: np.ndarray, abar: torch.Tensor, batch_size: int, device: str = "cpu") -> np.ndarray:
    """ΔL (n,) float64: pair-averaged L_Simple of float images (n, C, H, W) in [−1, 1] under the
    retrained model minus under the original, both on the same fixed (noise seed, t) draws of
    :func:`diffattr.measure.measure_losses` (ε is a function of (seed, split, row in ``images``, t))."""
    before = mean_losses(original_model, images, split, pairs, abar, batch_size, device)
    return mean_losses(retrained_model, images, split, pairs, abar, batch_size, device) - before


def mean_losses(model: torch.nn.Module, images: np.ndarray, split: str, pairs: np.ndarray, abar: torch.Tensor,
                batch_size: int, device: str = "cpu") -> np.ndarray:
    """(n,) float64: :func:`diffattr.measure.measure_losses` averaged over the (noise seed, t) pairs."""
    from diffattr.measure import measure_losses

    return measure_losses(model, images, split, pairs, abar, batch_size, device).astype(np.float64).mean(axis=0)


# ---------------------------------------------------------------------------------- regenerating


def regenerate(model: torch.nn.Module, params: dict[str, Any], seeds: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Float images (n, C, H, W) in [−1, 1] from the per-image initial noise of ``seeds`` with the
    ``generate`` block's DDIM sampler (steps, η, batch size) and ``params["scheduler"]`` (§4.5 step 4);
    each image depends on its own seed only."""
    from diffattr.sample import GenerateConfig, ddim_trajectory

    cfg = GenerateConfig(**params["generate"])
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    return ddim_trajectory(model, params["scheduler"], seeds, cfg.steps, cfg.eta, cfg.batch_size, device,
                           record=False)[0]


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


def evaluate_counterfactual(original_model_path: str, retrained_model_path: str, sample_seeds: np.ndarray,
                            sample_images: np.ndarray, params: dict[str, Any], encoder_cfg: EmbeddingConfig | None,
                            device: str = "cpu") -> dict[str, np.ndarray]:
    """Metrics of one retrained model for its generated sample(s), each an (n,) array:
    ``pixel_l2`` (:func:`image_change`), ``embedding_cosine`` (:func:`embedding_cosine`; NaN when
    ``encoder_cfg`` is None), ``loss_original``, ``loss_retrained`` and ``loss_change``
    (:func:`loss_change` on the ``ground_truth`` block's pairs, split ``gen``).

    ``sample_images`` are the stored generated images (uint8 (n, H, W, C), or float (n, C, H, W) in
    [−1, 1]) made from ``sample_seeds`` by the original model. They are re-made from those seeds with
    the original model first, and a mismatch of more than one 8-bit level (another model or sampler)
    raises ``ValueError``. The regenerated images are quantised to 8 bits before the pixel and
    embedding comparisons, as the stored ones are (D-TRAK compares 8-bit files). The loss draws ε
    are those of split ``gen`` at each sample's *position* in ``sample_images`` (what
    :func:`diffattr.measure.measure_losses` keys them by), identical for both models but not the
    ground-truth measurement's draws for that generated index. ``encoder_cfg``'s
    device is replaced by ``device``; a ``ddpm`` encoder uses ``params["unet"]``/``["scheduler"]``."""
    from diffattr.ground_truth import GroundTruthConfig
    from diffattr.methods.embedding import embed, load_encoder
    from diffattr.models.ddpm import alphas_cumprod, load_unet

    seeds = np.asarray(sample_seeds, dtype=np.int64).reshape(-1)
    original = as_model_range(sample_images)
    if len(original) != len(seeds):
        raise ValueError(f"{len(seeds)} sample seeds but {len(original)} sample images")
    original_model = load_unet(original_model_path, params["unet"], device)
    rerun = quantized(regenerate(original_model, params, seeds, device))
    if rerun.shape != original.shape or np.abs(rerun - original).max() > 1.5 / 127.5:
        raise ValueError(f"the original model {original_model_path} does not regenerate the given samples from "
                         f"their seeds (was the generated set made by another model or sampler?)")
    retrained_model = load_unet(retrained_model_path, params["unet"], device)
    regenerated = quantized(regenerate(retrained_model, params, seeds, device))

    gt = GroundTruthConfig.from_dict(params["ground_truth"])
    abar = alphas_cumprod(params["scheduler"])
    pairs = gt.pairs(len(abar))
    before = mean_losses(original_model, original, "gen", pairs, abar, gt.batch_size, device)
    after = mean_losses(retrained_model, original, "gen", pairs, abar, gt.batch_size, device)

    if encoder_cfg is None:
        cosine = np.full(len(seeds), np.nan)
    else:
        cfg = replace(encoder_cfg, device=device)
        encoder = load_encoder(cfg, params.get("unet"), params.get("scheduler"))
        cosine = embedding_cosine(embed(original, cfg, encoder=encoder), embed(regenerated, cfg, encoder=encoder))
    return {
        "pixel_l2": image_change(original, regenerated),
        "embedding_cosine": cosine,
        "loss_original": before,
        "loss_retrained": after,
        "loss_change": after - before,
    }


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


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` as CSV (no index), atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
