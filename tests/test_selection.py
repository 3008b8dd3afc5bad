"""Select-pool choice against the oracle's (diffattr/evaluate/selection.py, issue 18 item 1), checked
against the choice and the LDS written out with scipy."""

import numpy as np
import pytest
from scipy.optimize import nnls
from scipy.stats import spearmanr

from diffattr.choose import SelectSettings
from diffattr.evaluate.selection import pool_rows, resplit_rows, stack_resplit_rows

RULES = {"best": SelectSettings("best"), "one_se": SelectSettings("one_se", resamples=30)}


def _lds(pred, truth):
    return float(np.mean([spearmanr(pred[:, x], truth[:, x])[0] for x in range(truth.shape[1])]))


def _world(seed, m_select=8, m_lds=16, n=5):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(m_select + m_lds, n))
    preds = [truth + s * rng.normal(size=truth.shape) for s in (3.0, 1.0, 0.7, 5.0)]
    return [p[:m_select] for p in preds], truth[:m_select], [p[m_select:] for p in preds], truth[m_select:]


def test_the_gap_is_the_lds_pool_cost_of_the_select_choice():
    sel, sel_y, lds, lds_y = _world(0)
    rows = {r["rule"]: r for r in pool_rows(sel, sel_y, lds, lds_y, RULES, [0, 1, 2, 3])}
    on_lds = [_lds(p, lds_y) for p in lds]
    best = rows["best"]
    assert best["chosen"] == int(np.argmax([_lds(p, sel_y) for p in sel])) and best["oracle"] == int(np.argmax(on_lds))
    assert abs(best["gap"] - (max(on_lds) - on_lds[best["chosen"]])) < 1e-12
    assert best["agree"] == (best["chosen"] == best["oracle"]) and rows["one_se"]["gap"] >= 0


def test_re_splits_choose_on_m_subsets_and_judge_on_the_rest():
    sel, sel_y, lds, lds_y = _world(1)
    rows = resplit_rows(sel, sel_y, lds, lds_y, {"best": RULES["best"]}, [0, 1, 2, 3], sizes=[4, 16], splits=3, seed=7)
    assert [(r["size"], r["split"]) for r in rows] == [(4, 0), (4, 1), (4, 2), (16, 0), (16, 1), (16, 2)]
    # the first draw, written out: the same permutation, argmax on the first m rows, judged on the rest
    preds, truth = [np.vstack([s, v]) for s, v in zip(sel, lds)], np.vstack([sel_y, lds_y])
    perm = np.random.default_rng(7).permutation(24)
    pick, rest = perm[:4], perm[4:]
    chosen = int(np.argmax([_lds(p[pick], truth[pick]) for p in preds]))
    judged = [_lds(p[rest], truth[rest]) for p in preds]
    assert rows[0]["chosen"] == chosen and abs(rows[0]["gap"] - (max(judged) - judged[chosen])) < 1e-12


def test_stack_re_splits_fit_nnls_on_m_subsets_and_judge_on_the_rest():
    sel, sel_y, lds, lds_y = _world(2)
    preds, truth = [np.vstack([s, v]) for s, v in zip(sel, lds)], np.vstack([sel_y, lds_y])
    rows = stack_resplit_rows(preds, truth, sizes=[6, 12], splits=2, seed=3)
    assert [(r["size"], r["split"]) for r in rows] == [(6, 0), (6, 1), (12, 0), (12, 1)]
    # the first draw, written out: scipy nnls of the z-scored truth on the centred predictions
    perm = np.random.default_rng(3).permutation(24)
    fit, rest = perm[:6], perm[6:]
    y = truth[fit] - truth[fit].mean(axis=0)
    design = np.stack([(p[fit] - p[fit].mean(axis=0)).ravel() for p in preds], axis=1)
    w, _ = nnls(design, (y / y.std(axis=0)).ravel())
    w /= w.sum()
    judged = [_lds(p[rest], truth[rest]) for p in preds]
    first = rows[0]
    assert abs(first["nnls"] - _lds(sum(wc * p[rest] for wc, p in zip(w, preds)), truth[rest])) < 1e-12
    assert abs(first["equal"] - _lds(sum(preds)[rest], truth[rest])) < 1e-12  # Spearman ignores the 1/C
    assert first["best single"] == judged[int(np.argmax([_lds(p[fit], truth[fit]) for p in preds]))]
    assert first["oracle single"] == max(judged)
    # the least-noisy component (σ = 0.7) carries the largest weight
    assert int(np.argmax(w)) == 2


def test_stack_re_splits_refuse_a_size_that_leaves_nothing_to_judge():
    sel, sel_y, lds, lds_y = _world(2)
    preds, truth = [np.vstack([s, v]) for s, v in zip(sel, lds)], np.vstack([sel_y, lds_y])
    with pytest.raises(ValueError, match="fit size of 23 leaves no 2 subsets of 24"):
        stack_resplit_rows(preds, truth, sizes=[23], splits=1)
