"""Kernel methods: TRAK and D-TRAK (single model and ensemble), RelatIF, renormalised IF and DAS
(docs/methods.md §2.10, §2.11, §2.6, §2.7, §2.13).

τ(x, z) = φ(x)ᵀ (ΦᵀΦ + λI)⁻¹ φ(z) · w(z), with no out-to-loss term (Q = 1 for diffusion) and no
rescaling. TRAK uses features of F = L_Simple (``loss``), D-TRAK of F = L_Square (``square``): the
feature spec decides, the method is the same. The per-training-sample weight w(z) is 1 for
TRAK/D-TRAK, 1/‖K_λ⁻¹φ(z)‖ for RelatIF (``normalize: relatif``, §2.6), 1/‖φ(z)‖ for D-TRAK's
renormalised IF (``normalize: renorm``, §2.7), times DAS's training-residual weight r(z)
(``residual``, §2.13; DAS's features are a ``mean``-output spec with ``normalize_timesteps``).
The ensemble is the plain average of per-model score matrices, each model with its own λ (§2.10). λ is chosen per model and attributed set by LDS on the held-out
``select`` pool — never on the evaluation pool; the LDS of every λ on the ``lds`` pool is recorded
too, only as the "oracle" diagnostic that D-TRAK's protocol reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr

from diffattr.atomic import atomic_path
from diffattr.choose import SelectSettings, choose
from diffattr.ground_truth import read_ground_truth
from diffattr.integrity import array_options, read_array, require_arrays, seal
from diffattr.kernel import (
    Kernel,
    masked_train_sums,
    mean_leverage,
    query_rhs,
    scores_block,
    solve,
    subset_predictions,
    train_solution_norms,
)
from diffattr.methods.das import read_residual_weights
from diffattr.methods.registry import HELPS, MethodInputs, ScoreBlocks, ScoreContext
from diffattr.store import FeatureStore
from diffattr.subsets import read_pool


def column_weights(kernel: Kernel, factor: torch.Tensor | None, train: FeatureStore, normalize: str,
                   residual: np.ndarray | None = None) -> np.ndarray:
    """w(z) for every training sample: 1, 1/‖K_λ⁻¹φ(z)‖ (``relatif``) or 1/‖φ(z)‖ (``renorm``),
    times the residual weight r(z) when given. Only ``relatif`` depends on λ (needs ``factor``)."""
    if normalize == "relatif":
        weights = 1.0 / train_solution_norms(kernel, factor, train).clip(1e-300)
    elif normalize == "renorm":
        weights = np.concatenate([1.0 / np.linalg.norm(b, axis=1).clip(1e-300) for _, b in train.blocks()])
    else:
        weights = np.ones(kernel.n_train)
    return weights if residual is None else weights * residual


def read_residual(path: str | None) -> np.ndarray | None:
    """DAS's residual weights r(z) from the store at ``path`` (checked reads), or None without one."""
    return None if path is None else read_residual_weights(path)


def lambda_predictions(kernel_path: str, train_path: str, query_paths: dict[str, str],
                       pools: dict[str, tuple[str, str]], grid: list[float], device: str = "cpu",
                       normalize: str = "none", residual: np.ndarray | None = None
                       ) -> tuple[dict[tuple[str, str], list[np.ndarray]], dict[tuple[str, str], np.ndarray], Kernel]:
    """Per (set, pool): the subsets' LDS predictions at every λ of ``grid`` (M × n each; a subset's
    prediction is Σ_{z∈S} τ(x, z)·w(z), formed without the full score matrix), the pool's ground
    truth, and the kernel (for λ's absolute value)."""
    kernel = Kernel.load(kernel_path, device)
    train = FeatureStore(train_path)
    masks = {name: read_pool(m) for name, (m, _) in pools.items()}
    truths = {(split, name): read_ground_truth(t, split) for name, (_, t) in pools.items() for split in query_paths}
    rhs = {s: query_rhs(kernel, train, FeatureStore(p).read()) for s, p in query_paths.items()}

    def weighted_masks(weights: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Per pool: the masks times w(z) and, in the primal form, their sums of features (one pass)."""
        weighted = {name: m * weights for name, m in masks.items()}
        return {name: (m, masked_train_sums(train, m) if kernel.form == "primal" else None) for name, m in weighted.items()}

    # only RelatIF's weights depend on λ: the others' weighted sums are formed once
    fixed = None if normalize == "relatif" else weighted_masks(column_weights(kernel, None, train, normalize, residual))
    preds: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in truths}
    for lam in grid:
        factor = kernel.factor(lam)
        weighted = fixed or weighted_masks(column_weights(kernel, factor, train, normalize, residual))
        for split, b in rhs.items():
            solution = solve(factor, b)
            for name in pools:
                preds[split, name].append(HELPS * subset_predictions(kernel, solution, *weighted[name]))
    return preds, truths, kernel


def lambda_curve(kernel_path: str, train_path: str, query_paths: dict[str, str],
                 pools: dict[str, tuple[str, str]], grid: list[float], device: str = "cpu",
                 normalize: str = "none", residual: np.ndarray | None = None,
                 select: SelectSettings = SelectSettings()) -> pd.DataFrame:
    """LDS of every λ in ``grid`` on each pool (``pools``: name → (masks, ground truth)) and set
    (:func:`lambda_predictions`), with ``chosen`` marking, per pool and set, the λ that ``select``'s
    rule picks (§4.6: under one_se the larger λ, the simpler, is preferred) and ``se`` its paired
    shortfall SE (NaN under best)."""
    preds, truths, kernel = lambda_predictions(kernel_path, train_path, query_paths, pools, grid, device, normalize,
                                               residual)
    rows = []
    for (split, name), p in preds.items():
        choice = choose(p, truths[split, name], select, larger_first(grid))
        rows.extend({"set": split, "pool": name, "lambda": lam, "lambda_abs": kernel.absolute(lam),
                     "lds": choice.lds[i], "se": choice.se[i], "chosen": i == choice.index} for i, lam in enumerate(grid))
    return pd.DataFrame(rows)


def larger_first(grid: list[float]) -> list[int]:
    """The λ grid's indices, the most regularised (simplest, §4.6) first."""
    return sorted(range(len(grid)), key=lambda i: -grid[i])


def choose_lambda(curve: pd.DataFrame, pool: str = "select") -> dict[str, float]:
    """Per attributed set, the λ with the best LDS on ``pool`` (the oracle's rule: argmax)."""
    on_pool = curve[curve["pool"] == pool]
    return {s: float(g.loc[g["lds"].idxmax(), "lambda"]) for s, g in on_pool.groupby("set")}


def chosen_lambda(curve: pd.DataFrame, pool: str = "select") -> dict[str, float]:
    """Per attributed set, the λ the curve's job chose on ``pool`` (its ``chosen`` rows: the rule of
    ``evaluation.select``, :func:`lambda_curve`); a curve without that column: the argmax."""
    if "chosen" not in curve:
        return choose_lambda(curve, pool)
    on_pool = curve[(curve["pool"] == pool) & curve["chosen"].astype(str).str.lower().eq("true")]
    return {s: float(g["lambda"].iloc[0]) for s, g in on_pool.groupby("set")}


def select_lambda(kernel_path: str, train_path: str, query_paths: dict[str, str],
                  pools: dict[str, tuple[str, str]], grid: list[float], out_path: str, device: str = "cpu",
                  normalize: str = "none", residual_path: str | None = None,
                  select: SelectSettings = SelectSettings()) -> pd.DataFrame:
    """select_lambda (``pools``: the select pool, ``select``: the configured rule) and oracle_lambda
    (the lds pool with the argmax rule, a diagnostic) jobs: the λ curve, ``chosen`` marking each
    pool's choice per set (:func:`lambda_curve`)."""
    curve = lambda_curve(kernel_path, train_path, query_paths, pools, grid, device, normalize,
                         read_residual(residual_path), select)
    with atomic_path(out_path) as tmp:
        curve.to_csv(tmp, index=False)
    return curve


def with_oracle(select: pd.DataFrame, oracle: pd.DataFrame) -> pd.DataFrame:
    """A select-pool λ curve with the oracle job's lds-pool rows appended, their ``chosen`` marking the
    select pool's choice (what the scores use), for the λ figure."""
    chosen = chosen_lambda(select)
    marked = oracle.assign(chosen=[lam == chosen.get(s) for s, lam in zip(oracle["set"], oracle["lambda"])])
    return pd.concat([select, marked], ignore_index=True)


@dataclass(frozen=True)
class TrakSettings:
    """A ``trak`` method block (docs/methods.md §2.10–§2.13): its feature spec, its ``models`` (pool
    and count: several make an ensemble), the relative λ grid chosen on the select pool, the
    ``normalize`` weighting (none, relatif, renorm), the ``query`` (image, or journey: Journey-TRAK)
    and DAS's ``residual`` (timesteps, noise_seed, batch_size; None: no residual weight); an
    attribute run, which has no select pool, sets its λ as ``chosen_lambda`` or reads it from a
    benchmark run (``lambda_from``, resolved into ``chosen_lambda`` at DAG time:
    :func:`diffattr.attribute.benchmark_lambda`)."""

    features: str
    models: dict[str, Any]
    lambdas: list[float]
    normalize: str = "none"
    query: str = "image"
    residual: dict[str, Any] | None = None
    chosen_lambda: float | None = None
    lambda_from: dict[str, Any] | None = None
    ensemble_scale: str = "leverage"


def kernel_models(inputs: MethodInputs, normalize: str, query_set: str,
                  fixed_lambda: float | None = None, ensemble_scale: str = "leverage") -> tuple[list[tuple], list[float]]:
    """Per model of the method (inputs ``kernels``, ``train``, ``queries``, ``lambdas`` and DAS's
    ``residuals``, one entry each): (kernel, K_λ factor at the select-pool λ — or ``fixed_lambda``
    where no λ curve is an input, an attribute run — train features, query features (None without
    ``queries``: ``diffattr query`` featurizes its own), w(z)), with the chosen λs.

    Ensembles (more than one model): each member's λ is its own, so raw scores differ in scale by up
    to the ratio of the λs (τ ≈ φᵀφ'/λ) and a plain average is the smallest-λ member alone. With
    ``ensemble_scale: leverage`` (the default) member m's w(z) is divided by its mean leverage h̄_m
    (:func:`diffattr.kernel.mean_leverage`), so every member's training self-scores average 1 and
    the mean weighs all members; ``none`` is the plain average of docs/methods.md §2.10 (D-TRAK's
    protocol). One model's scores are never rescaled."""
    from diffattr.jobs import device

    residuals = inputs.residuals or (None,) * len(inputs.kernels)
    curves = inputs.lambdas or (None,) * len(inputs.kernels)
    queries = inputs.queries or (None,) * len(inputs.kernels)
    if not inputs.lambdas and fixed_lambda is None:
        raise ValueError("a kernel method without a select-pool λ curve needs chosen_lambda")
    parts, chosen = [], []
    for kernel_path, train_path, query_path, curve, residual in zip(
            inputs.kernels, inputs.train, queries, curves, residuals, strict=True):
        kernel = Kernel.load(kernel_path, device())
        lam = fixed_lambda if curve is None else chosen_lambda(pd.read_csv(curve))[query_set]
        chosen.append(lam)
        factor, train = kernel.factor(lam), FeatureStore(train_path)
        weights = column_weights(kernel, factor, train, normalize, read_residual(residual))
        if len(inputs.kernels) > 1 and ensemble_scale == "leverage":
            weights = weights / mean_leverage(kernel, lam, factor)
        parts.append((kernel, factor, train, query_path and FeatureStore(query_path), weights))
    return parts, chosen


def trak_scores(ctx: ScoreContext) -> ScoreBlocks:
    """Scores averaged over the method's models (:func:`kernel_models`). With ``query: journey`` the
    query features are Journey-TRAK's step-averaged ones (§2.12)."""
    settings = TrakSettings(**ctx.settings)
    parts, chosen = kernel_models(ctx.inputs, settings.normalize, ctx.query_set, settings.chosen_lambda,
                                   settings.ensemble_scale)
    n_queries, n_train = parts[0][3].shape[0], parts[0][0].n_train

    def block(start: int, stop: int) -> np.ndarray:
        return np.mean([scores_block(k, f, train, q.read(start, stop)) * w for k, f, train, q, w in parts], axis=0)

    label = f"λ={chosen[0]:g}" if len(set(chosen)) == 1 else "λ per model: " + ", ".join(f"{c:g}" for c in chosen)
    where = "select pool" if ctx.inputs.lambdas else "chosen_lambda"
    return ScoreBlocks(n_queries, n_train, block, {"chosen": f"{label} ({where})", "lambdas": chosen})


def trajectory_scores(inputs: MethodInputs, params: dict[str, Any], out_path: str, query_rows: int = 4096) -> np.ndarray:
    """score_trajectory: Journey-TRAK's score at every sampling step s, τ_s(x, z) = φ_s(x)ᵀ K_λ⁻¹ φ(z)·w(z)
    averaged over the method's models (docs/methods.md §2.12: one score vector per step; their mean over
    steps is the method's score), written as an (S, n, N) float32 array ``scores`` with the steps'
    ``timesteps``. All steps of a block of samples are solved together (about ``query_rows``
    (sample, step) rows per solve), so the training features are streamed once per block, not once
    per step. Returns the timesteps."""
    settings = TrakSettings(**ScoreContext.from_params(params, inputs, "gen").settings)
    parts, chosen = kernel_models(inputs, settings.normalize, "gen", settings.chosen_lambda, settings.ensemble_scale)
    query = parts[0][3]
    require_arrays(query.path, query.group, ("step_timesteps",))
    timesteps = read_array(query.path, query.group["step_timesteps"], 0, "step_timesteps").astype(np.int64)
    n_queries, n_train, steps = query.shape[0], parts[0][0].n_train, len(timesteps)
    rows = max(1, query_rows // steps)
    with atomic_path(out_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"method": params, "sign": HELPS, "lambdas": chosen})
        root.create_array("timesteps", data=timesteps, **array_options())
        arr = root.create_array("scores", shape=(steps, n_queries, n_train), dtype="float32",
                                chunks=(1, min(256, n_queries), n_train), **array_options())
        seal(root)
        for start in range(0, n_queries, rows):
            stop = min(start + rows, n_queries)
            block = np.mean([scores_block(k, f, train, q.read_steps(start, stop).reshape(-1, q.shape[1])) * w
                             for k, f, train, q, w in parts], axis=0)
            arr[:, start:stop] = block.reshape(stop - start, steps, n_train).transpose(1, 0, 2)
    return timesteps
