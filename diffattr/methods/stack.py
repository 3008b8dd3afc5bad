"""Stacking (``kind: stack``, docs/methods.md §2.19): a non-negative combination of other methods'
scores, its weights fit on the select pool only, so the lds pool stays untouched by the fit.

Each component c's scores are first put in one convention and on one scale, row by row:
u_c(x) = standardise(−s_c·τ_c(x)), where s_c is the component's LDS sign (§0, §4.4; −s_c·τ is
"larger helps" for every kind) and standardise subtracts the row's mean over the training images and
divides by its standard deviation (a constant row becomes 0). For random subsets of inclusion rate
α, every row's predicted outputs then vary by the same α(1−α)N across subsets, so no component
dominates by its units (the ensemble problem of issue 18, item 4).

Fit (``fit: nnls``): with the select pool's masks A (M × N) and ground truth Y (M × n), the
components' predictions are P_c = −A·u_cᵀ (the LDS's A·(s·τ)ᵀ with s = −1), and

    w = argmin_{w ≥ 0} Σ_x ‖ z(Y[:, x]) − Σ_c w_c·(P_c[:, x] − mean) ‖²

pooled over the queries x, where z centres and scales each query's ground truth across subsets (the
LDS is a per-query rank correlation, so a query's loss units must not weigh it). The weights are
normalised to sum to 1 (the LDS does not see the scale). ``fit: equal`` gives every component
1/C, the plain average of the standardised scores, as the control. The stacked score is
τ(x) = Σ_c w_c·u_c(x), "larger helps" (sign −1), served by row blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from diffattr.methods.registry import ScoreBlocks, ScoreContext, method_settings

FITS = ("nnls", "equal")


@dataclass(frozen=True)
class StackSettings:
    """``methods``: the component methods (evaluated ones, of other kinds); ``fit``: nnls or equal."""

    methods: list[str]
    fit: str = "nnls"

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"unknown stack fit {self.fit!r}; choose one of {FITS}")
        if len(self.methods) < 2:
            raise ValueError(f"a stack combines at least 2 methods; it names {len(self.methods)}")


def standardize_rows(scores: np.ndarray, sign: int) -> np.ndarray:
    """u = (v − mean(v)) / std(v) per row of v = −sign·τ (float64); a constant row gives zeros."""
    v = -float(sign) * np.asarray(scores, dtype=np.float64)
    v = v - v.mean(axis=1, keepdims=True)
    std = v.std(axis=1, keepdims=True)
    return np.divide(v, std, out=np.zeros_like(v), where=std > 0)


def zscore_columns(y: np.ndarray) -> np.ndarray:
    """Each column centred and divided by its std across rows (a constant column gives zeros)."""
    y = np.asarray(y, dtype=np.float64) - np.mean(y, axis=0, keepdims=True)
    std = y.std(axis=0, keepdims=True)
    return np.divide(y, std, out=np.zeros_like(y), where=std > 0)


def fit_weights(predictions: list[np.ndarray], truth: np.ndarray, fit: str = "nnls") -> np.ndarray:
    """w ≥ 0 (summing to 1) of the module docstring's pooled least squares, from each component's
    select-pool predictions (M × n each) and the select pool's ground truth (M × n)."""
    if fit == "equal":
        return np.full(len(predictions), 1.0 / len(predictions))
    from scipy.optimize import nnls

    design = np.stack([(p - p.mean(axis=0, keepdims=True)).ravel() for p in predictions], axis=1)
    w, _ = nnls(design, zscore_columns(truth).ravel())
    if w.sum() <= 0:  # no component predicts the select pool at all: fall back to the plain average
        return np.full(len(predictions), 1.0 / len(predictions))
    return w / w.sum()


class ComponentScores:
    """One component's score store, served as standardised row blocks u_c (module docstring)."""

    def __init__(self, path: str):
        from diffattr.scores import score_attrs, score_shape

        self.path = path
        self.sign = int(score_attrs(path)["sign"])
        self.n_queries, self.n_train = score_shape(path)

    def blocks(self, block_rows: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        from diffattr.scores import iter_score_blocks

        for start, block in iter_score_blocks(self.path, block_rows):
            yield start, standardize_rows(block, self.sign)

    def rows(self, start: int, stop: int) -> np.ndarray:
        from diffattr.scores import read_score_rows

        return standardize_rows(read_score_rows(self.path, start, stop), self.sign)


def select_pool(ctx: ScoreContext, shapes: list[tuple[int, int]], what: str) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(n_queries, n_train, masks, truth): the select pool of a kind that combines other methods'
    scores (``shapes``: theirs, which must agree with each other and with the masks; ``what`` names
    them in a refusal)."""
    from diffattr.ground_truth import read_ground_truth
    from diffattr.subsets import read_pool

    if len(set(shapes)) != 1:
        raise ValueError(f"the {what} have score matrices of different shapes {sorted(set(shapes))}")
    n_queries, n_train = shapes[0]
    masks = read_pool(ctx.inputs.masks)
    if masks.shape[1] != n_train:
        raise ValueError(f"the select pool's masks cover {masks.shape[1]} training images but the scores {n_train}")
    return n_queries, n_train, masks, read_ground_truth(ctx.inputs.truth, ctx.query_set)


def stack_scores(ctx: ScoreContext) -> ScoreBlocks:
    """Fit the weights on the select pool (masks and truth of ``ctx.inputs``) and serve Σ_c w_c·u_c."""
    from diffattr.evaluate.lds import predicted_outputs

    settings = StackSettings(**method_settings(StackSettings, ctx.settings, "stack"))
    parts = [ComponentScores(p) for p in ctx.inputs.components]
    n_queries, n_train, masks, truth = select_pool(ctx, [(c.n_queries, c.n_train) for c in parts],
                                                   f"stacked methods {settings.methods}")
    predictions = [predicted_outputs(masks, c.blocks(), n_queries, -1) for c in parts]
    weights = fit_weights(predictions, truth, settings.fit)

    def block(start: int, stop: int) -> np.ndarray:
        return sum(w * c.rows(start, stop) for w, c in zip(weights, parts) if w > 0).astype(np.float32)

    chosen = ", ".join(f"{m} {w:.2f}" for m, w in zip(settings.methods, weights))
    return ScoreBlocks(n_queries, n_train, block,
                       {"chosen": f"weights {chosen} ({settings.fit} on select)",
                        "weights": [float(w) for w in weights], "components": list(settings.methods)})
