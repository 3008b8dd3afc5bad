"""Spearman correlation per column: the LDS's correlation across subsets (docs/methods.md §4.4) and
the ground truth's split-half reliability. A leaf module, so that ground_truth and evaluate need not
import each other."""

from __future__ import annotations

import numpy as np


def spearman_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (both M × n);
    NaN where a column is constant."""
    from scipy.stats import rankdata  # here, not at the top: measure_outputs jobs import this module (0.5 s)

    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    denom = np.sqrt((ra**2).sum(axis=0) * (rb**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=0) / np.where(denom > 0, denom, 1.0), np.nan)
