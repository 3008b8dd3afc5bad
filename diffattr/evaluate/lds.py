"""Linear datamodeling score, exactly as docs/methods.md §4.4.

For subset masks A (M × N), scores τ (n × N) and ground truth Y (M × n):
predicted outputs P = A · (s·τ)ᵀ with s = −1 for scores where larger means "helps" (TRAK family,
similarity, TracIn) and s = +1 for scores in loss units (empirical influence, datamodels);
LDS = mean over queries x of Spearman(P[:, x], Y[:, x]) across the M subsets. The Spearman is
vectorised (rank along the subset axis, Pearson of the ranks, ties averaged — scipy's definition);
queries whose prediction or ground truth is constant across subsets have no correlation and are
left out of the mean, as ``np.nanmean`` does; the result says how many queries the mean is over
(``n_defined``) and how many had no correlation (``n_undefined``). An LDS needs at least 2 subsets
and at least one defined correlation: anything less is an :class:`LDSError`, never an empty number.
Uncertainty: a bootstrap over subsets (resampling rows of A and Y together), reported as the std of
the bootstrap distribution and its percentile interval, as D-TRAK reports it. Two methods compare by
the paired bootstrap (:func:`paired_difference`): the same draws of the subsets for both, so the
interval of LDS₁ − LDS₂ leaves out the subsets' noise that the two share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from diffattr.spearman import spearman_per_column  # noqa: F401  (the LDS's correlation, re-exported)


class LDSError(ValueError):
    """An LDS that cannot be computed (too few subsets, no query with a defined correlation)."""


def predicted_outputs(masks: np.ndarray, score_blocks: Iterable[tuple[int, np.ndarray]], n_queries: int, sign: int) -> np.ndarray:
    """P = A · (s·τ)ᵀ (M × n), accumulated over row blocks (start, τ[start:start+b]) of the scores,
    so the (n × N) score matrix is never held whole."""
    masks = np.asarray(masks, dtype=np.float64)
    out = np.full((masks.shape[0], n_queries), np.nan)
    for start, block in score_blocks:
        out[:, start : start + len(block)] = sign * masks @ np.asarray(block, dtype=np.float64).T
    if np.isnan(out).any():
        raise ValueError("score blocks do not cover every query")
    return out


def lds_from_predictions(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of the defined Spearman correlations (NaN when none is defined: a bootstrap
    draw that repeats one subset)."""
    per_query = spearman_per_column(pred, truth)
    return float(np.mean(per_query[~np.isnan(per_query)])) if (~np.isnan(per_query)).any() else float("nan")


@dataclass(frozen=True)
class LDSResult:
    """An LDS, its bootstrap std and CI, the per-query correlations (NaN: undefined) and their counts."""

    lds: float
    std: float
    ci_low: float
    ci_high: float
    per_query: np.ndarray

    @property
    def n_defined(self) -> int:
        """Queries the LDS is the mean over: those with a defined correlation."""
        return int((~np.isnan(self.per_query)).sum())

    @property
    def n_undefined(self) -> int:
        """Queries left out: prediction or ground truth constant across the subsets."""
        return int(np.isnan(self.per_query).sum())


def check_lds_inputs(pred: np.ndarray, truth: np.ndarray) -> None:
    """Refuse (:class:`LDSError`, one sentence) predictions and ground truth an LDS cannot be taken
    over: different shapes or fewer than 2 subsets."""
    if pred.shape != truth.shape:
        raise LDSError(f"the predictions are {pred.shape} (subsets × queries) but the ground truth is {truth.shape}.")
    if pred.shape[0] < 2:
        raise LDSError(f"an LDS ranks the subsets and needs at least 2 of them; the evaluation pool has {pred.shape[0]}.")


def bootstrap_lds(pred: np.ndarray, truth: np.ndarray, resamples: int, confidence: float, seed: int) -> LDSResult:
    """LDS on all subsets, with the std and percentile CI of ``resamples`` bootstrap draws of the
    subsets (rows), seeded by ``seed``; an :class:`LDSError` for fewer than 2 subsets or when no
    query has a defined correlation."""
    check_lds_inputs(pred, truth)
    per_query = spearman_per_column(pred, truth)
    if np.isnan(per_query).all():
        raise LDSError(f"none of the {per_query.size} queries has a defined correlation (each one's prediction or "
                       f"ground truth is constant across the {pred.shape[0]} subsets).")
    draws = np.array([lds_from_predictions(pred[idx], truth[idx]) for idx in bootstrap_draws(pred.shape[0], resamples, seed)])
    draws = draws[~np.isnan(draws)]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha]) if len(draws) else (np.nan, np.nan)
    std = float(np.std(draws, ddof=1)) if len(draws) > 1 else np.nan
    return LDSResult(float(np.mean(per_query[~np.isnan(per_query)])), std, float(lo), float(hi), per_query)


@dataclass(frozen=True)
class PairedDifference:
    """LDS(method) − LDS(reference) on all subsets, and the percentile CI of the paired draws."""

    delta: float
    ci_low: float
    ci_high: float


def bootstrap_draws(m: int, resamples: int, seed: int) -> np.ndarray:
    """The subsets' bootstrap draws (resamples × m row indices) of seed ``seed``: those of
    :func:`bootstrap_lds`, so every method evaluated with one seed sees the same draws."""
    return np.random.default_rng(seed).integers(0, m, size=(resamples, m))


def paired_difference(pred: np.ndarray, reference: np.ndarray, truth: np.ndarray, resamples: int, confidence: float,
                      seed: int) -> PairedDifference:
    """The paired bootstrap of LDS(pred) − LDS(reference) over the subsets (both M × n against the
    same truth): each draw resamples the rows of both predictions and the truth together; draws where
    either LDS is undefined are left out."""
    check_lds_inputs(pred, truth)
    check_lds_inputs(reference, truth)
    delta = lds_from_predictions(pred, truth) - lds_from_predictions(reference, truth)
    draws = paired_draws([pred, reference], truth, resamples, seed)
    diffs = draws[:, 0] - draws[:, 1]
    diffs = diffs[~np.isnan(diffs)]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha]) if len(diffs) else (np.nan, np.nan)
    return PairedDifference(float(delta), float(lo), float(hi))


def paired_draws(preds: Sequence[np.ndarray], truth: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """LDS^b of every prediction (B × C) on the same ``resamples`` bootstrap draws of the subsets
    (:func:`bootstrap_draws`), all draws ranked in one call; NaN where no query is defined."""
    m, n = truth.shape
    draws = bootstrap_draws(m, resamples, seed)

    def columns(a: np.ndarray) -> np.ndarray:  # (B, m, n) draws side by side as m × (B·n) columns
        return np.moveaxis(a[draws], 1, 0).reshape(m, resamples * n)

    y = columns(truth)
    out = np.empty((resamples, len(preds)))
    for c, p in enumerate(preds):
        rho = spearman_per_column(columns(p), y).reshape(resamples, n)
        defined = ~np.isnan(rho)
        with np.errstate(invalid="ignore"):
            out[:, c] = np.where(defined.any(axis=1), np.nansum(rho, axis=1) / defined.sum(axis=1), np.nan)
    return out
