"""Select-pool choice against the oracle's (diffattr/evaluate/selection.py, issue 18 item 1)."""

import pandas as pd

from diffattr.evaluate.selection import selection_table


def _curve(pool, lds_by_set):
    return pd.DataFrame([{"set": s, "pool": pool, "lambda": lam, "lds": v}
                         for s, values in lds_by_set.items() for lam, v in values.items()])


def test_the_gap_is_the_lds_pool_cost_of_the_select_choice():
    select = _curve("select", {"val": {0.1: 0.30, 1.0: 0.35, 10.0: 0.20}, "gen": {0.1: 0.1, 1.0: 0.2, 10.0: 0.4}})
    oracle = _curve("lds", {"val": {0.1: 0.21, 1.0: 0.18, 10.0: 0.25}, "gen": {0.1: 0.0, 1.0: 0.1, 10.0: 0.3}})
    table = selection_table({"trak": (select, oracle)})
    table = table[table["rule"] == "best"].set_index("set")
    assert table.loc["val", "lambda_chosen"] == 1.0 and table.loc["val", "lambda_oracle"] == 10.0
    assert table.loc["val", "lds_chosen"] == 0.18 and abs(table.loc["val", "gap"] - 0.07) < 1e-12
    assert not table.loc["val", "agree"]
    assert table.loc["gen", "agree"] and table.loc["gen", "gap"] == 0


def test_the_smoothed_rule_ignores_one_noisy_grid_point():
    """A lone spike at λ = 0.1 wins the plain argmax; averaged with its neighbours the broad maximum
    at λ = 1000 wins (by hand: 0.307 there against 0.133 at the spike and 0.24 next to it)."""
    from diffattr.evaluate.selection import smoothed_choice

    grid = [10.0**e for e in range(-3, 6)]
    select = _curve("select", {"val": dict(zip(grid, [0.0, 0.0, 0.4, 0.0, 0.0, 0.3, 0.32, 0.3, 0.1]))})
    assert smoothed_choice(select) == {"val": 1000.0}
    assert smoothed_choice(select, window=0) == {"val": 0.1}
