"""The retraining family: empirical influence and datamodels (docs/methods.md §2.14, §2.15).

Both methods read the same two matrices of the ``retrain`` pool (docs/methods.md §4.2, §4.3):

* ``masks`` (M × N, boolean): row m marks the training samples subset model m was trained on;
* ``outputs`` (M × Q, float): y_m(x), the L_Simple of model m at query x (lower = better fit).

and return a score matrix τ (Q × N) in **loss units**: τ(x, z_i) > 0 means that including z_i
*raises* the loss at x. They therefore enter the LDS with the sign s = +1
(:data:`diffattr.methods.registry.LOSS_UNITS`, docs/methods.md §0 and §4.4), unlike the TRAK family.

* Empirical influence (Feldman & Zhang, §2.14):
  EI(x, z_i) = mean_{m: i∈S_m} y_m(x) − mean_{m: i∉S_m} y_m(x).
* Datamodels (Ilyas et al., §2.15): per query x, ridge regression
  y_m(x) ≈ w_xᵀ 1[S_m] + b_x with α chosen from a grid by K-fold cross-validation, exactly
  sklearn's ``RidgeCV(alphas, cv=K)`` (unshuffled ``KFold(K)``, mean R² over folds, first best α
  in grid order, refit on all M models); τ(x, z_i) = w_x[i].

Everything is vectorised over queries: the datamodel fit never loops over queries. The ridge
solves go through the M × M Gram matrix G = A Aᵀ of the design (exact in floating point, since
A is 0/1), which every fold derives by centring, and one eigendecomposition per fold serves every
α and every query. :func:`lds_vs_models` gives the "LDS vs number of retrained models" table
(docs/methods.md §5.3) on an evaluation pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from diffattr.evaluate.lds import bootstrap_lds, predicted_outputs
from diffattr.methods.registry import LOSS_UNITS, ScoreBlocks, ScoreContext

log = logging.getLogger(__name__)

DEFAULT_ALPHAS: tuple[float, ...] = (0.1, 1.0, 10.0)
"""The α grid of D-TRAK's datamodel notebooks, ``RidgeCV(alphas=[0.1, 1, 10], cv=5)`` (§2.15)."""

METHODS: tuple[str, ...] = ("empirical_influence", "datamodels")
"""Method names understood by :func:`lds_vs_models`."""


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

def _check_inputs(masks: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert (masks, outputs) to float64 arrays (M × N) and (M × Q)."""
    masks = np.asarray(masks)
    outputs = np.asarray(outputs, dtype=np.float64)
    if masks.ndim != 2:
        raise ValueError(f"masks must be a 2-D (models × training samples) matrix, got shape {masks.shape}")
    if outputs.ndim != 2:
        raise ValueError(f"outputs must be a 2-D (models × queries) matrix, got shape {outputs.shape}")
    if masks.shape[0] != outputs.shape[0]:
        raise ValueError(f"masks has {masks.shape[0]} models (rows) but outputs has {outputs.shape[0]}: "
                         "row m of both must describe the same subset model")
    if masks.shape[0] == 0 or masks.shape[1] == 0 or outputs.shape[1] == 0:
        raise ValueError(f"empty input: masks {masks.shape}, outputs {outputs.shape}")
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise ValueError("masks must be boolean (or 0/1): entry [m, i] says whether training sample i "
                             "is in subset m")
        masks = masks.astype(bool)
    if not np.isfinite(outputs).all():
        m, q = np.argwhere(~np.isfinite(outputs))[0]
        raise ValueError(f"outputs contain a non-finite value (model {m}, query {q}, and "
                         f"{int((~np.isfinite(outputs)).sum()) - 1} more)")
    return masks.astype(np.float64), outputs


def _describe(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:5])
    return f"training sample {shown}" if len(indices) == 1 else (
        f"training samples {shown}" + (f" (and {len(indices) - 5} more)" if len(indices) > 5 else ""))


# ---------------------------------------------------------------------------------------------
# Empirical influence (§2.14)
# ---------------------------------------------------------------------------------------------

def empirical_influence(masks: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Empirical influence of every training sample on every query (docs/methods.md §2.14).

    EI(x, z_i) = mean_{m: i∈S_m} y_m(x) − mean_{m: i∉S_m} y_m(x), in loss units (LDS sign +1).

    Vectorised: with A = masks (M × N) and Y = outputs (M × Q), the in-subset sums are AᵀY and the
    out-of-subset sums 1ᵀY − AᵀY.

    Args:
        masks: (M × N) boolean, ``masks[m, i]`` = whether training sample i is in subset S_m.
        outputs: (M × Q) float, ``outputs[m, x]`` = y_m(x).

    Returns:
        (Q × N) float64 scores.

    Raises:
        ValueError: on mismatched shapes, non-0/1 masks, non-finite outputs, or when some training
            sample is in every subset or in none (one of the two means is then undefined).
    """
    a, y = _check_inputs(masks, outputs)
    m = a.shape[0]
    n_in = a.sum(axis=0)  # (N,)
    n_out = m - n_in
    for bad, where in ((n_out == 0, "in all"), (n_in == 0, "in none")):
        if bad.any():
            raise ValueError(f"empirical influence is undefined: {_describe(np.flatnonzero(bad))} "
                             f"{'is' if bad.sum() == 1 else 'are'} {where} of the {m} subsets, so "
                             "the mean over subsets " + ("without" if where == "in all" else "with")
                             + " it has no models; use more subset models")
    mean_in = a.T @ y  # (N × Q) sums over the subsets containing i, turned into means in place
    mean_out = y.sum(axis=0) - mean_in
    mean_in /= n_in[:, None]
    mean_out /= n_out[:, None]
    mean_in -= mean_out
    return mean_in.T


# ---------------------------------------------------------------------------------------------
# Datamodels (§2.15)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatamodelFit:
    """Per-query ridge datamodels y_m(x) ≈ w_xᵀ 1[S_m] + b_x (docs/methods.md §2.15).

    Attributes:
        weights: (Q × N) τ(x, z_i) = w_x[i], in loss units (LDS sign +1).
        intercepts: (Q,) b_x.
        alphas: the α grid, in the order searched.
        alpha: (Q,) the α chosen for each query (sklearn's ``RidgeCV.alpha_``).
        cv_scores: (len(alphas) × Q) mean over folds of the held-out R² (sklearn's
            ``GridSearchCV.cv_results_["mean_test_score"]``; ``best_score_`` is its max per query).
        n_models: M, the number of subset models fitted on.
        n_folds: K.
    """

    weights: np.ndarray
    intercepts: np.ndarray
    alphas: tuple[float, ...]
    alpha: np.ndarray
    cv_scores: np.ndarray
    n_models: int
    n_folds: int

    @property
    def best_score(self) -> np.ndarray:
        """(Q,) the CV score of the chosen α, per query."""
        return self.cv_scores.max(axis=0)

    def alpha_counts(self) -> dict[float, int]:
        """How many queries chose each α of the grid (for reporting)."""
        return {a: int((self.alpha == a).sum()) for a in self.alphas}


def _centred_gram(g: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(A_rows − 1μᵀ)(A_cols − 1μᵀ)ᵀ from the Gram matrix G = AAᵀ, μ = the mean of A over ``cols``.

    With r = G[cols, cols]·1/m, s = G[rows, cols]·1/m and c = 1ᵀG[cols, cols]1/m²:
    G[rows, cols] − s1ᵀ − 1rᵀ + c.
    """
    g_cc = g[np.ix_(cols, cols)]
    g_rc = g[np.ix_(rows, cols)]
    r = g_cc.mean(axis=1)
    return g_rc - g_rc.mean(axis=1, keepdims=True) - r[None, :] + r.mean()


def _r2(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Column-wise R² as sklearn's ``r2_score`` (force_finite): 1 − SSE/SST; a constant column
    scores 1.0 if predicted exactly, else 0.0."""
    sse = ((truth - pred) ** 2).sum(axis=0)
    sst = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - sse / sst
    return np.where(sst > 0, r2, np.where(sse == 0, 1.0, 0.0))


def _check_alphas(alphas: Iterable[float]) -> tuple[float, ...]:
    grid = tuple(float(a) for a in alphas)
    if not grid:
        raise ValueError("the α grid is empty")
    if not all(np.isfinite(a) and a > 0 for a in grid):
        raise ValueError(f"every ridge α must be a positive finite number, got {grid}")
    return grid


def fit_datamodels(masks: np.ndarray, outputs: np.ndarray, alphas: Iterable[float] = DEFAULT_ALPHAS,
                   cv: int = 5, seed: int = 0, shuffle: bool = False) -> DatamodelFit:
    """Fit one ridge datamodel per query, α by K-fold CV, all queries at once (docs/methods.md §2.15).

    For each query x: y_m(x) ≈ w_xᵀ 1[S_m] + b_x, minimising Σ_m (y_m(x) − w_xᵀa_m − b_x)² + α‖w_x‖²
    (intercept not penalised). α is the grid value with the best mean held-out R² over the K folds
    (first in grid order on ties), then the model is refit on all M rows. This is sklearn's
    ``RidgeCV(alphas, cv=KFold(cv))`` per query; it is computed in the dual: with centred design
    A_c and centred targets Y_c, W = A_cᵀ (A_cA_cᵀ + αI)⁻¹ Y_c, from one eigendecomposition of the
    M × M centred Gram matrix per fold, shared by every α and query.

    Args:
        masks: (M × N) boolean subset masks.
        outputs: (M × Q) y_m(x).
        alphas: the ridge α grid (sklearn's penalty scale, on the unscaled 0/1 design).
        cv: number of folds K (≥ 2, ≤ M).
        seed: the shuffling seed of the folds, used only when ``shuffle`` is true.
        shuffle: shuffle the models before splitting; the reference protocol (``cv=5``) does not.

    Returns:
        A :class:`DatamodelFit`; ``.weights`` (Q × N) are the scores, ``.alpha`` the chosen α.
    """
    a, y = _check_inputs(masks, outputs)
    grid = _check_alphas(alphas)
    m, q = y.shape
    if not 2 <= int(cv) <= m:
        raise ValueError(f"cv={cv} folds need 2 ≤ cv ≤ the number of subset models ({m})")
    g = a @ a.T  # (M × M), exact: integer entries
    folds = KFold(int(cv), shuffle=shuffle, random_state=seed if shuffle else None).split(np.empty((m, 1)))
    scores = np.zeros((len(grid), q))
    for train, test in folds:
        k = _centred_gram(g, train, train)
        lam, u = np.linalg.eigh((k + k.T) / 2)
        lam = np.clip(lam, 0.0, None)
        y_mean = y[train].mean(axis=0)
        c = u.T @ (y[train] - y_mean)  # (m_train × Q)
        b = _centred_gram(g, test, train) @ u  # (m_test × m_train)
        for j, alpha in enumerate(grid):
            pred = y_mean + b @ (c / (lam + alpha)[:, None])
            scores[j] += _r2(y[test], pred)
    scores /= int(cv)
    choice = np.argmax(scores, axis=0)  # first maximum: GridSearchCV's rank_test_score tie rule

    everything = np.arange(m)
    lam, u = np.linalg.eigh(_centred_gram(g, everything, everything))
    lam = np.clip(lam, 0.0, None)
    mu = a.mean(axis=0)
    y_mean = y.mean(axis=0)
    c = u.T @ (y - y_mean)
    weights = np.empty((q, a.shape[1]))
    for j, alpha in enumerate(grid):
        cols = np.flatnonzero(choice == j)
        if len(cols):
            z = u @ (c[:, cols] / (lam + alpha)[:, None])  # (M × q_j) = (K + αI)⁻¹ Y_c
            weights[cols] = (a.T @ z - np.outer(mu, z.sum(axis=0))).T
    intercepts = y_mean - weights @ mu
    return DatamodelFit(weights, intercepts, grid, np.asarray(grid)[choice], scores, m, int(cv))


def datamodels(masks: np.ndarray, outputs: np.ndarray, alphas: Iterable[float] = DEFAULT_ALPHAS,
               cv: int = 5, seed: int = 0, shuffle: bool = False) -> np.ndarray:
    """Datamodel scores τ(x, z_i) = w_x[i] (Q × N), loss units, LDS sign +1 (docs/methods.md §2.15).

    Shorthand for ``fit_datamodels(...).weights``; use :func:`fit_datamodels` to report the α
    chosen per query (``.alpha``, ``.alpha_counts()``) and the CV scores.
    """
    return fit_datamodels(masks, outputs, alphas, cv, seed, shuffle).weights


# ---------------------------------------------------------------------------------------------
# LDS vs number of retrained models (§4.4, §5.3)
# ---------------------------------------------------------------------------------------------

def lds_vs_models(masks: np.ndarray, outputs: np.ndarray, eval_masks: np.ndarray, eval_truth: np.ndarray,
                  counts: Sequence[int], method: str | Sequence[str], alphas: Iterable[float] = DEFAULT_ALPHAS,
                  cv: int = 5, resamples: int = 0, confidence: float = 0.95, seed: int = 42) -> pd.DataFrame:
    """LDS of empirical influence / datamodels fitted on the first M' retrain models, M' ∈ ``counts``.

    For each method and M', the scores τ (Q × N) come from ``masks[:M']``, ``outputs[:M']``; the
    predicted output of evaluation subset m at query x is P[m, x] = +Σ_{i∈S_m} τ(x, z_i)
    (sign :data:`LOSS_UNITS`, docs/methods.md §4.4) and LDS = mean over queries of Spearman(P[:, x],
    Y[:, x]) across the evaluation subsets, as :func:`diffattr.evaluate.lds.bootstrap_lds`
    computes it (with a bootstrap std / CI over evaluation subsets when ``resamples`` > 1; D-TRAK
    used 64 resamples, seed 42). This is the table of docs/methods.md §5.3 (M' = 64/128/256/512).

    Args:
        masks, outputs: the retrain pool, (M × N) and (M × Q); its queries are the evaluation's.
        eval_masks: (M_eval × N) masks of the evaluation (``lds``) pool.
        eval_truth: (M_eval × Q) ground truth y_m(x) of the evaluation pool.
        counts: numbers of retrain models M' to use (each ≤ M), in any order.
        method: ``"empirical_influence"``, ``"datamodels"`` or a sequence of both.
        alphas, cv: the datamodel α grid and folds; with fewer than ``cv`` models (M' < K) the fit
            uses M' folds (leave-one-out), recorded in the ``cv`` column.

    Returns:
        One row per (method, M'): ``method``, ``n_models``, ``lds``, ``std``, ``ci_low``,
        ``ci_high``, ``n_queries``, ``cv`` (folds used, NaN for empirical
        influence), ``note`` (why an empirical-influence point is NaN: with few models some sample is
        in all or none of them, so EI is undefined) and, for datamodels, ``alpha=<α>`` columns with the number of queries that
        chose each α (NaN for empirical influence).
    """
    methods = (method,) if isinstance(method, str) else tuple(method)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown retraining method(s) {unknown}; known: {list(METHODS)}")
    masks = np.asarray(masks)
    outputs = np.asarray(outputs, dtype=np.float64)
    eval_masks = np.asarray(eval_masks)
    eval_truth = np.asarray(eval_truth, dtype=np.float64)
    _check_inputs(masks, outputs)
    _check_inputs(eval_masks, eval_truth)
    if eval_masks.shape[1] != masks.shape[1]:
        raise ValueError(f"the evaluation masks cover {eval_masks.shape[1]} training samples but the retrain "
                         f"masks cover {masks.shape[1]}")
    if eval_truth.shape[1] != outputs.shape[1]:
        raise ValueError(f"the evaluation ground truth has {eval_truth.shape[1]} queries but the retrain "
                         f"outputs have {outputs.shape[1]}: both must be measured on the same queries")
    counts = [int(c) for c in counts]
    too_many = [c for c in counts if not 1 <= c <= len(masks)]
    if too_many:
        raise ValueError(f"model counts {too_many} are outside 1..{len(masks)} (the retrain models available)")
    grid = _check_alphas(alphas)
    n_queries = outputs.shape[1]
    rows = []
    for name in methods:
        for count in counts:
            start = time.perf_counter()
            extra: dict[str, float] = {"cv": np.nan} | {f"alpha={a:g}": np.nan for a in grid}
            if name == "empirical_influence":
                try:
                    scores = empirical_influence(masks[:count], outputs[:count])
                except ValueError as err:  # too few models: some sample is in all (or none) of them
                    rows.append({"method": name, "n_models": count, "lds": np.nan, "std": np.nan, "ci_low": np.nan,
                                 "ci_high": np.nan, "n_queries": n_queries, **extra, "note": str(err)})
                    continue
            else:
                fit = fit_datamodels(masks[:count], outputs[:count], grid, min(int(cv), count))
                scores = fit.weights
                extra = {"cv": fit.n_folds} | {f"alpha={a:g}": n for a, n in fit.alpha_counts().items()}
            log.info("%s on %d models fitted in %.2f s", name, count, time.perf_counter() - start)
            pred = predicted_outputs(eval_masks, [(0, scores)], n_queries, LOSS_UNITS)
            res = bootstrap_lds(pred, eval_truth, resamples, confidence, seed)
            rows.append({"method": name, "n_models": count, "lds": res.lds, "std": res.std, "ci_low": res.ci_low,
                         "ci_high": res.ci_high, "n_queries": n_queries, **extra, "note": ""})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class RetrainingSettings:
    """A ``retraining`` method block (docs/methods.md §2.14, §2.15): the ``estimator``, the first
    ``models`` retrain-pool models, the datamodels' RidgeCV ``alphas`` and ``cv`` folds, and the
    model counts of the LDS-vs-M ``curve``."""

    estimator: str
    models: int
    alphas: list[float]
    cv: int
    curve: list[int]


def retraining_scores(ctx: ScoreContext) -> ScoreBlocks:
    """Registry scorer: EI or datamodel scores from the first ``params["models"]`` retrain-pool
    models (inputs ``masks``: the pool's masks, ``truth``: its ground truth)."""
    from diffattr.ground_truth import read_ground_truth
    from diffattr.subsets import read_pool

    inputs, settings, query_set = ctx.inputs, RetrainingSettings(**ctx.settings), ctx.query_set
    count = settings.models
    masks = read_pool(inputs.masks)
    if count > len(masks):
        raise ValueError(f"the method asks for {count} retrain models but the retrain pool has {len(masks)}; "
                         "raise subsets.pools.retrain.count")
    masks = masks[:count]
    outputs = read_ground_truth(inputs.truth, query_set)[:count]
    attrs: dict[str, Any] = {"n_models": count}
    if settings.estimator == "empirical_influence":
        scores = empirical_influence(masks, outputs)
    else:
        fit = fit_datamodels(masks, outputs, settings.alphas, settings.cv)
        scores = fit.weights
        attrs["chosen"] = "α per query: " + ", ".join(f"{a:g}×{n}" for a, n in fit.alpha_counts().items())
    return ScoreBlocks.from_matrix(scores, attrs)


def retraining_curve(masks_path: str, truth_path: str, eval_masks_path: str, eval_truth_path: str,
                     params: dict[str, Any], sets: Sequence[str], out_path: str, lds: dict[str, Any]) -> pd.DataFrame:
    """retraining_curve job: :func:`lds_vs_models` of one method for every attributed set, at the
    model counts of ``params["curve"]``."""
    from diffattr.atomic import atomic_path
    from diffattr.ground_truth import read_ground_truth
    from diffattr.subsets import read_pool

    masks, eval_masks = read_pool(masks_path), read_pool(eval_masks_path)
    tables = []
    for split in sets:
        table = lds_vs_models(masks, read_ground_truth(truth_path, split), eval_masks,
                              read_ground_truth(eval_truth_path, split), params["curve"], params["estimator"],
                              params["alphas"], params["cv"], lds["bootstrap_resamples"], lds["confidence"],
                              lds["bootstrap_seed"])
        tables.append(table.assign(set=split))
    table = pd.concat(tables, ignore_index=True)
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False)
    return table
