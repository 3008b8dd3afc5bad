"""The LDS jobs: one evaluation per method (so a method's change re-evaluates only that method),
then one table with every method, attributed set and the ground truth's ceiling.

``n_queries`` is the number of queries an LDS is the mean over (those with a defined correlation);
``n_undefined`` counts the queries left out because their prediction or ground truth is constant
across the subsets (:mod:`diffattr.evaluate.lds`). The tables hold no wall time: a method's seconds
are in the run's runtime table (:func:`diffattr.plots.method_runtime`), so the same config gives the
same bytes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from diffattr.atomic import atomic_path
from diffattr.evaluate.lds import LDSError, LDSResult, bootstrap_lds, paired_difference, predicted_outputs
from diffattr.ground_truth import read_ground_truth
from diffattr.scores import iter_score_blocks, score_attrs, score_shape
from diffattr.subsets import read_pool

COLUMNS = ["method", "kind", "set", "lds", "std", "ci_low", "ci_high", "n_subsets", "n_queries", "n_undefined", "sign",
           "chosen", "reference", "delta", "delta_low", "delta_high"]
STEP_COLUMNS = ["step", "timestep", "lds", "std", "ci_low", "ci_high", "n_queries", "n_undefined"]


def lds_cells(result: LDSResult) -> dict[str, float | int]:
    """The table cells of one LDS: the estimate, its bootstrap std and CI, and the query counts."""
    return {"lds": result.lds, "std": result.std, "ci_low": result.ci_low, "ci_high": result.ci_high,
            "n_queries": result.n_defined, "n_undefined": result.n_undefined}


def evaluate_lds(pred: np.ndarray, truth: np.ndarray, params: dict[str, Any], what: str) -> LDSResult:
    """:func:`bootstrap_lds` with the config's bootstrap settings; a refusal names ``what`` was evaluated."""
    try:
        return bootstrap_lds(pred, truth, params["bootstrap_resamples"], params["confidence"], params["bootstrap_seed"])
    except LDSError as e:
        raise LDSError(f"The LDS of {what} cannot be computed: {e}") from None


def method_predictions(path: str, masks: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """A score store's LDS predictions A·(s·τ)ᵀ over the pool's masks, and the store's attrs."""
    attrs = score_attrs(path)
    n_queries, n_train = score_shape(path)
    if n_train != masks.shape[1]:
        raise ValueError(f"{path} scores {n_train} training samples but the subset masks cover {masks.shape[1]}")
    return predicted_outputs(masks, iter_score_blocks(path), n_queries, int(attrs["sign"])), attrs


def evaluate_method(method: str, score_paths: dict[str, str], masks_path: str, truth_path: str,
                    params: dict[str, Any], out_path: str, reference: dict[str, str] | None = None) -> pd.DataFrame:
    """LDS (with bootstrap) of one method on each attributed set; with ``reference`` (that method's
    score stores by set, ``params["reference"]`` its name) also the paired bootstrap of the
    difference to it (:func:`diffattr.evaluate.lds.paired_difference`, the same draws)."""
    masks = read_pool(masks_path)
    rows = []
    for split, path in score_paths.items():
        pred, attrs = method_predictions(path, masks)
        truth = read_ground_truth(truth_path, split)
        result = evaluate_lds(pred, truth, params, f"method '{method}' on set '{split}' ({masks_path}, {truth_path})")
        row = {"method": method, "kind": attrs["kind"], "set": split, **lds_cells(result),
               "n_subsets": len(masks), "sign": int(attrs["sign"]), "chosen": attrs.get("chosen", "")}
        if reference and split in reference:
            diff = paired_difference(pred, method_predictions(reference[split], masks)[0], truth,
                                     params["bootstrap_resamples"], params["confidence"], params["bootstrap_seed"])
            row |= {"reference": params["reference"], "delta": diff.delta, "delta_low": diff.ci_low,
                    "delta_high": diff.ci_high}
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def evaluate_steps(scores_path: str, masks_path: str, truth_path: str, params: dict[str, Any],
                   out_path: str, block_rows: int = 256) -> pd.DataFrame:
    """trajectory_lds: the LDS (with bootstrap) of Journey-TRAK's score at each sampling step on the
    generated set (docs/methods.md §2.12), from the per-step score store of ``score_trajectory``."""
    import zarr

    masks, truth = read_pool(masks_path), read_ground_truth(truth_path, "gen")
    root = zarr.open_group(scores_path, mode="r")
    scores, sign = root["scores"], int(root.attrs["sign"])
    rows = []
    for s, t in enumerate(np.asarray(root["timesteps"][:])):
        blocks = ((a, np.asarray(scores[s, a : a + block_rows])) for a in range(0, scores.shape[1], block_rows))
        result = evaluate_lds(predicted_outputs(masks, blocks, scores.shape[1], sign), truth, params,
                              f"sampling step {s} of {scores_path}")
        rows.append({"step": s, "timestep": int(t), **lds_cells(result)})
    table = pd.DataFrame(rows, columns=STEP_COLUMNS)
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def ceiling_rows(reliability: pd.DataFrame) -> pd.DataFrame:
    """The ceiling rows: per set, the split-half reliability of the ground truth (its reliability
    table, :func:`diffattr.ground_truth.reliability_table`). Counted like a method's LDS: ``n_queries``
    = measured − ``n_undefined`` (queries whose halves had no correlation); a table written before
    that column existed counts 0 undefined."""
    undefined = reliability["n_undefined"] if "n_undefined" in reliability else 0
    return pd.DataFrame(
        {"method": "ground_truth_split_half", "kind": "ceiling", "set": reliability["set"],
         "lds": reliability["split_half"], "std": np.nan, "ci_low": np.nan, "ci_high": np.nan,
         "n_subsets": reliability["n_subsets"], "n_queries": reliability["n_queries"] - undefined,
         "n_undefined": undefined, "sign": 0, "chosen": "halves: " + reliability["halves"]},
        columns=COLUMNS,
    )


def oracle_rows(curves: dict[str, str], pool: str = "lds") -> pd.DataFrame:
    """Diagnostic only: each single-model kernel method's LDS with λ tuned on the evaluation pool
    itself (D-TRAK's protocol), to compare with the paper; never used to choose anything."""
    rows = []
    for method, path in curves.items():
        curve = pd.read_csv(path)
        for split, g in curve[curve["pool"] == pool].groupby("set"):
            best = g.loc[g["lds"].idxmax()]
            rows.append({"method": f"{method} [oracle λ, tuned on {pool} pool]", "kind": "diagnostic", "set": split,
                         "lds": best["lds"], "std": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                         "n_subsets": np.nan, "n_queries": np.nan, "n_undefined": np.nan, "sign": -1,
                         "chosen": f"λ={best['lambda']:g}"})
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table (no extra dependency): LDS ± bootstrap std with the CI, the subsets and the
    queries it is over (``queries``: a defined correlation; ``undefined``: left out), and, when the
    evaluation has a reference method, each method's paired difference to it."""
    paired = "delta" in table and table["delta"].notna().any()
    lines = ["| method | set | LDS | ± std | 95% CI | subsets | queries | undefined | chosen |"
             + (" Δ vs reference [95% CI, paired] |" if paired else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if paired else "")]
    def missing(x: object) -> bool:
        return x is None or (isinstance(x, float) and math.isnan(x))

    def f(x: float) -> str:
        return "" if missing(x) else f"{x:.3f}"

    def n(x: float) -> str:
        return "" if missing(x) else str(int(x))

    for r in table.itertuples():
        ci = f"[{f(r.ci_low)}, {f(r.ci_high)}]" if f(r.ci_low) else ""
        chosen = r.chosen if isinstance(r.chosen, str) else ""
        delta = (f" {r.delta:+.3f} [{r.delta_low:+.3f}, {r.delta_high:+.3f}] vs {r.reference} |"
                 if not missing(getattr(r, "delta", None)) else " |") if paired else ""
        lines.append(f"| {r.method} | {r.set} | {f(r.lds)} | {f(r.std)} | {ci} | {n(r.n_subsets)} | {n(r.n_queries)} | "
                     f"{n(r.n_undefined)} | {chosen} |{delta}")
    return "\n".join(lines) + "\n"


def assemble(method_tables: list[str], reliability_path: str, oracle_curves: dict[str, str], csv_path: str,
             md_path: str) -> pd.DataFrame:
    """lds_table: per set, the ceiling first, then methods by LDS, then the oracle diagnostics."""
    methods = pd.concat([pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in method_tables], ignore_index=True)
    table = pd.concat([ceiling_rows(pd.read_csv(reliability_path)), methods.sort_values(["set", "lds"], ascending=[True, False]),
                       oracle_rows(oracle_curves)], ignore_index=True)
    table = table.sort_values("set", kind="stable").reset_index(drop=True)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(table))
    return table
