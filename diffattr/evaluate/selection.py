"""How well the select pool chooses (issue 18, item 1): a method's λ chosen on the select pool
against the λ the lds pool itself would choose (the "oracle", a diagnostic only), both read on the
lds pool's λ curve. ``gap`` = LDS(oracle λ) − LDS(chosen λ) ≥ 0 on the lds pool is what choosing
honestly costs; ``agree`` says the two choices are the same λ.

Two rules are compared on the same curves: ``best`` (the workflow's: the λ of best select-pool LDS,
:func:`diffattr.methods.trak.choose_lambda`) and ``smooth`` (the λ of best select-pool LDS after a
moving average over each λ and its neighbours on the log grid, :func:`smoothed_choice`), which trades a
little resolution for less sensitivity to one noisy grid point of an 8-subset pool."""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffattr.methods.trak import choose_lambda

COLUMNS = ["method", "set", "rule", "lambda_chosen", "lambda_oracle", "lds_chosen", "lds_oracle", "gap", "agree"]
RULES = ("best", "smooth")


def smoothed_choice(curve: pd.DataFrame, pool: str = "select", window: int = 1) -> dict[str, float]:
    """Per set, argmax over λ of the mean LDS over λ's grid neighbours within ``window`` steps
    (fewer at the grid's ends)."""
    chosen = {}
    for split, g in curve[curve["pool"] == pool].groupby("set"):
        g = g.sort_values("lambda")
        lds = g["lds"].to_numpy(dtype=float)
        smooth = [np.nanmean(lds[max(0, i - window) : i + window + 1]) for i in range(len(lds))]
        chosen[split] = float(g["lambda"].to_numpy()[int(np.nanargmax(smooth))])
    return chosen


def selection_rows(method: str, select_curve: pd.DataFrame, oracle_curve: pd.DataFrame) -> list[dict]:
    """Per attributed set and rule: the select pool's choice and the lds pool's own, both read on the
    lds pool's curve (``oracle_curve``: the oracle_lambda job's table)."""
    oracle = choose_lambda(oracle_curve, oracle_curve["pool"].iloc[0])
    rows = []
    for rule, chosen in (("best", choose_lambda(select_curve, "select")), ("smooth", smoothed_choice(select_curve))):
        for split, lam in chosen.items():
            on_lds = oracle_curve[oracle_curve["set"] == split].set_index("lambda")["lds"]
            best = oracle[split]
            rows.append({"method": method, "set": split, "rule": rule, "lambda_chosen": lam, "lambda_oracle": best,
                         "lds_chosen": float(on_lds[lam]), "lds_oracle": float(on_lds[best]),
                         "gap": float(on_lds[best] - on_lds[lam]), "agree": lam == best})
    return rows


def selection_table(curves: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """:func:`selection_rows` of every method: ``curves`` maps a method to its (select, oracle) curves."""
    return pd.DataFrame([r for m, (s, o) in curves.items() for r in selection_rows(m, s, o)], columns=COLUMNS)
