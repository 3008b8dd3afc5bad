"""TRAK and D-TRAK for diffusion, single model and ensemble (METHODS.md §2.10, §2.11).

τ(x, z) = φ(x)ᵀ (ΦᵀΦ + λI)⁻¹ φ(z), with no out-to-loss term (Q = 1 for diffusion) and no rescaling.
TRAK uses features of F = L_Simple (``loss``), D-TRAK of F = L_Square (``square``): the feature
spec decides, the method is the same. The ensemble is the plain average of per-model score matrices,
each model with its own λ (§2.10). λ is chosen per model and attributed set by LDS on the held-out
``select`` pool — never on the evaluation pool; the LDS of every λ on the ``lds`` pool is recorded
too, only as the "oracle" diagnostic that D-TRAK's protocol reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from diffattr.atomic import atomic_path
from diffattr.evaluate.lds import lds_from_predictions
from diffattr.ground_truth import read_ground_truth
from diffattr.kernel import Kernel, masked_train_sums, query_rhs, scores_block, solve, subset_predictions
from diffattr.methods.registry import HELPS, ScoreBlocks
from diffattr.store import FeatureStore
from diffattr.subsets import read_pool


def lambda_curve(kernel_path: str, train_path: str, query_paths: dict[str, str],
                 pools: dict[str, tuple[str, str]], grid: list[float], device: str = "cpu") -> pd.DataFrame:
    """LDS of every λ in ``grid`` on each pool (``pools``: name → (masks, ground truth)) and set."""
    kernel = Kernel.load(kernel_path, device)
    train = FeatureStore(train_path)
    masks = {name: read_pool(m) for name, (m, _) in pools.items()}
    sums = {name: masked_train_sums(train, m) if kernel.form == "primal" else None for name, m in masks.items()}
    rhs = {s: query_rhs(kernel, train, FeatureStore(p).read()) for s, p in query_paths.items()}
    rows = []
    for lam in grid:
        factor = kernel.factor(lam)
        for split, b in rhs.items():
            solution = solve(factor, b)
            for name, (_, truth_path) in pools.items():
                pred = HELPS * subset_predictions(kernel, solution, masks[name], sums[name])
                rows.append({"set": split, "pool": name, "lambda": lam, "lambda_abs": kernel.absolute(lam),
                             "lds": lds_from_predictions(pred, read_ground_truth(truth_path, split))})
    return pd.DataFrame(rows)


def choose_lambda(curve: pd.DataFrame, pool: str = "select") -> dict[str, float]:
    """Per attributed set, the λ with the best LDS on ``pool``."""
    on_pool = curve[curve["pool"] == pool]
    return {s: float(g.loc[g["lds"].idxmax(), "lambda"]) for s, g in on_pool.groupby("set")}


def select_lambda(kernel_path: str, train_path: str, query_paths: dict[str, str],
                  pools: dict[str, tuple[str, str]], grid: list[float], out_path: str, device: str = "cpu") -> pd.DataFrame:
    """select_lambda job: the λ curve, with ``chosen`` marking the select-pool choice per set."""
    curve = lambda_curve(kernel_path, train_path, query_paths, pools, grid, device)
    chosen = choose_lambda(curve)
    curve["chosen"] = [lam == chosen[s] for s, lam in zip(curve["set"], curve["lambda"])]
    with atomic_path(out_path) as tmp:
        curve.to_csv(tmp, index=False)
    return curve


def trak_scores(inputs: dict[str, str], params: dict[str, Any], query_set: str) -> ScoreBlocks:
    """Scores averaged over the method's models; inputs ``kernel_i``, ``train_i``, ``query_i``,
    ``lambda_i`` for model i."""
    from diffattr.jobs import device

    models = sorted({int(k.split("_")[1]) for k in inputs if k.startswith("kernel_")})
    parts = []
    chosen = []
    for i in models:
        kernel = Kernel.load(inputs[f"kernel_{i}"], device())
        lam = choose_lambda(pd.read_csv(inputs[f"lambda_{i}"]))[query_set]
        chosen.append(lam)
        parts.append((kernel, kernel.factor(lam), FeatureStore(inputs[f"train_{i}"]), FeatureStore(inputs[f"query_{i}"])))
    n_queries, n_train = parts[0][3].shape[0], parts[0][0].n_train

    def block(start: int, stop: int) -> np.ndarray:
        return np.mean([scores_block(k, f, train, q.read(start, stop)) for k, f, train, q in parts], axis=0)

    label = f"λ={chosen[0]:g}" if len(set(chosen)) == 1 else "λ per model: " + ", ".join(f"{c:g}" for c in chosen)
    return ScoreBlocks(n_queries, n_train, block, {"chosen": f"{label} (select pool)", "lambdas": chosen})
