"""Linear datamodeling score, exactly as METHODS.md §4.4.

For subset masks A (M × N), scores τ (n × N) and ground truth Y (M × n):
predicted outputs P = A · (s·τ)ᵀ with s = −1 for scores where larger means "helps" (TRAK family,
similarity, TracIn) and s = +1 for scores in loss units (empirical influence, datamodels);
LDS = mean over queries x of Spearman(P[:, x], Y[:, x]) across the M subsets. The Spearman is
vectorised (rank along the subset axis, Pearson of the ranks, ties averaged — scipy's definition);
queries whose prediction or ground truth is constant across subsets have no correlation and are
left out of the mean, as ``np.nanmean`` does. Uncertainty: a bootstrap over subsets (resampling
rows of A and Y together), reported as the std of the bootstrap distribution and its percentile
interval, as D-TRAK reports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def spearman_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (both M × n);
    NaN where a column is constant."""
    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    denom = np.sqrt((ra**2).sum(axis=0) * (rb**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=0) / np.where(denom > 0, denom, 1.0), np.nan)


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
    return float(np.nanmean(spearman_per_column(pred, truth)))


@dataclass(frozen=True)
class LDSResult:
    lds: float
    std: float
    ci_low: float
    ci_high: float
    per_query: np.ndarray


def bootstrap_lds(pred: np.ndarray, truth: np.ndarray, resamples: int, confidence: float, seed: int) -> LDSResult:
    """LDS on all subsets, with the std and percentile CI of ``resamples`` bootstrap draws of the
    subsets (rows), seeded by ``seed``."""
    per_query = spearman_per_column(pred, truth)
    rng = np.random.default_rng(seed)
    m = pred.shape[0]
    draws = np.array([lds_from_predictions(pred[idx], truth[idx]) for idx in rng.integers(0, m, size=(resamples, m))])
    alpha = (1 - confidence) / 2
    lo, hi = (np.nanquantile(draws, [alpha, 1 - alpha]) if resamples else (np.nan, np.nan))
    return LDSResult(float(np.nanmean(per_query)), float(np.nanstd(draws, ddof=1)) if resamples > 1 else np.nan, float(lo), float(hi), per_query)
