"""How the select pool chooses among candidates: a λ grid (§2.10), the methods of a ``select``
method (§2.20, a sweep's values among them), docs/methods.md §4.6.

Each candidate c has select-pool predictions P_c (M × n: M select subsets, n queries) and the pool
has ground truth Y (M × n); its select-pool LDS is L_c = mean_x Spearman(P_c[:, x], Y[:, x]) (§4.4).

- ``best``: argmax_c L_c (ties: the candidate first in order of preference).
- ``one_se``: the one-standard-error rule, paired. B bootstrap draws resample the M subsets (rows of
  every P_c and of Y together, with replacement), the same draws for every candidate, giving L_c^b.
  With c* = argmax L_c, the paired standard error of c's shortfall is
  SE_c = std_b(L_{c*}^b − L_c^b) (ddof 1, draws where either LDS is undefined left out), and the choice
  is the first candidate, in order of preference (the simplest first: the largest λ, the first listed
  method), with L_{c*} − L_c ≤ SE_c: one that the select pool cannot tell from the best. With 8 subsets
  the argmax often follows one noisy subset; the rule trades a shortfall no larger than the noise for
  the candidate that overfits least.

Pure functions over arrays; no file is read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffattr.evaluate.lds import lds_from_predictions, paired_draws

RULES = ("best", "one_se")


@dataclass(frozen=True)
class SelectSettings:
    """``evaluation.select``: the ``rule`` (best | one_se) and, for one_se, the bootstrap's
    ``resamples`` and ``seed``."""

    rule: str = "best"
    resamples: int = 200
    seed: int = 0

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown selection rule {self.rule!r}; choose one of {RULES}")
        if self.resamples < 2:
            raise ValueError(f"the one_se rule needs at least 2 bootstrap resamples, not {self.resamples}")


def lds_of(preds: Sequence[np.ndarray], truth: np.ndarray) -> np.ndarray:
    """L_c of every candidate (C,), NaN where no query has a defined correlation."""
    return np.array([lds_from_predictions(p, truth) for p in preds])


def shortfall_se(draws: np.ndarray, best: int) -> np.ndarray:
    """SE_c = std_b(L_best^b − L_c^b) per candidate (0 for the best itself; NaN with < 2 usable draws)."""
    diff = draws[:, [best]] - draws
    out = np.full(draws.shape[1], np.nan)
    for c in range(draws.shape[1]):
        d = diff[:, c][~np.isnan(diff[:, c])]
        out[c] = float(np.std(d, ddof=1)) if d.size > 1 else np.nan
    return out


@dataclass(frozen=True)
class Choice:
    """The chosen candidate's index, every candidate's select-pool LDS, and (one_se) each one's paired
    shortfall SE (NaN under ``best``)."""

    index: int
    lds: np.ndarray
    se: np.ndarray

    @property
    def best(self) -> int:
        return int(np.nanargmax(self.lds))


def choose(preds: Sequence[np.ndarray], truth: np.ndarray, settings: SelectSettings = SelectSettings(),
           order: Sequence[int] | None = None) -> Choice:
    """The module docstring's rule over candidates given as select-pool predictions (each M × n) with
    the pool's ground truth (M × n); ``order`` lists the candidates' indices simplest first (default:
    as given)."""
    order = list(range(len(preds))) if order is None else list(order)
    if sorted(order) != list(range(len(preds))):
        raise ValueError(f"the preference order {order} is not a permutation of the {len(preds)} candidates")
    lds = lds_of(preds, truth)
    if np.isnan(lds).all():
        raise ValueError("no candidate has a defined LDS on the select pool")
    best_value = np.nanmax(lds)
    if settings.rule == "best":
        first = next(c for c in order if lds[c] == best_value)
        return Choice(first, lds, np.full(len(preds), np.nan))
    best = next(c for c in order if lds[c] == best_value)
    se = shortfall_se(paired_draws(preds, truth, settings.resamples, settings.seed), best)
    se[best] = 0.0
    within = [c for c in order if not np.isnan(lds[c]) and best_value - lds[c] <= (0.0 if np.isnan(se[c]) else se[c])]
    return Choice(within[0], lds, se)
