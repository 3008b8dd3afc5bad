"""Choosing on the select pool (diffattr/choose.py, docs/methods.md §4.6), the ``select`` kind
(diffattr/methods/select.py, §2.20), a selecting sweep and the λ curve's one_se choice, each checked
against a computation written out here with scipy's own Spearman."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from diffattr.choose import SelectSettings, choose, lds_of
from diffattr.methods.registry import HELPS, LOSS_UNITS, score_method
from diffattr.scores import read_score_rows, score_attrs, write_scores

M, N_QUERIES = 10, 6


def _lds(pred, truth):
    """Mean over queries of scipy's Spearman across subsets (the LDS of §4.4), NaN ones left out."""
    rho = [spearmanr(pred[:, x], truth[:, x])[0] for x in range(truth.shape[1])]
    return float(np.nanmean(rho)) if not np.isnan(rho).all() else np.nan


def _reference_one_se(preds, truth, resamples, seed, order):
    """The one-standard-error rule written out: the same draws of the subsets for every candidate,
    the paired differences to the best, the first candidate in ``order`` within one SE."""
    lds = [_lds(p, truth) for p in preds]
    best = max(order, key=lambda c: (lds[c], -order.index(c)))
    draws = np.random.default_rng(seed).integers(0, truth.shape[0], size=(resamples, truth.shape[0]))
    diffs = [[] for _ in preds]
    for idx in draws:
        with np.errstate(invalid="ignore"):
            on = [_lds(p[idx], truth[idx]) for p in preds]
        for c in range(len(preds)):
            if not (np.isnan(on[best]) or np.isnan(on[c])):
                diffs[c].append(on[best] - on[c])
    se = [np.std(d, ddof=1) for d in diffs]
    se[best] = 0.0
    return next(c for c in order if lds[best] - lds[c] <= se[c]), lds, best


def _world(seed, gap):
    """A truth and three candidates: c0 = truth + large noise, c1 = truth + noise shrunk by ``gap``,
    c2 = noise only."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(M, N_QUERIES))
    noise = rng.normal(size=(3, M, N_QUERIES))
    return [truth + 1.2 * noise[0], truth + (1.2 - gap) * noise[1], noise[2]], truth


def test_lds_of_each_candidate_is_scipy_s_mean_spearman():
    preds, truth = _world(0, 0.5)
    np.testing.assert_allclose(lds_of(preds, truth), [_lds(p, truth) for p in preds], atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("gap", [0.1, 1.0])
def test_the_best_and_one_se_rules_equal_their_written_out_definitions(seed, gap):
    preds, truth = _world(seed, gap)
    best = choose(preds, truth, SelectSettings("best"))
    assert best.index == int(np.argmax([_lds(p, truth) for p in preds]))
    for order in ([0, 1, 2], [2, 1, 0]):
        got = choose(preds, truth, SelectSettings("one_se", resamples=50, seed=seed), order)
        expected, lds, top = _reference_one_se(preds, truth, 50, seed, order)
        assert got.index == expected and got.best == top
        np.testing.assert_allclose(got.lds, lds, atol=1e-12)


def test_one_se_keeps_the_simplest_candidate_unless_another_is_clearly_better():
    # c1 better than c0 by a hair: best takes c1, one_se keeps c0 (listed first); by a mile: both take c1
    hair = [choose(*_world(s, 0.02), SelectSettings("one_se", resamples=100)).index for s in range(10)]
    mile = [choose(*_world(s, 1.15), SelectSettings("one_se", resamples=100)).index for s in range(10)]
    assert hair.count(0) >= 8 and mile.count(1) >= 9, (hair, mile)
    with pytest.raises(ValueError, match="unknown selection rule"):
        SelectSettings("median")


def _write_pool(tmp_path, masks, y, split):
    from test_stack import _write_masks, _write_truth

    _write_masks(tmp_path / "select_masks.zarr", masks)
    return str(tmp_path / "select_masks.zarr"), _write_truth(tmp_path, "select_truth", y, split)


@pytest.mark.parametrize("rule", ["best", "one_se"])
def test_the_select_job_serves_the_chosen_candidate_s_scores_with_its_sign(tmp_path, rule):
    rng = np.random.default_rng(5)
    n, n_queries, m = 80, 7, 12
    masks = rng.random((m, n)) < 0.5
    helps = rng.normal(size=(n_queries, n))  # the truth is −A·helpsᵀ: "larger helps" scores
    y = -(masks.astype(float) @ helps.T) + rng.normal(size=(m, n_queries)) * 0.5
    candidates = {"noise": (rng.normal(size=(n_queries, n)), HELPS),        # listed first: the simplest
                  "loss": (-1e-3 * helps + 1e-4 * rng.normal(size=(n_queries, n)), LOSS_UNITS)}
    stores = []
    for name, (tau, sign) in candidates.items():
        stores.append(str(tmp_path / f"{name}.zarr"))
        write_scores(stores[-1], n_queries, n, lambda s, e, t=tau: t[s:e], 3, {"kind": "x", "sign": sign, "chosen": "λ=1"})
    masks_path, truth = _write_pool(tmp_path, masks, y, "val")
    out = str(tmp_path / "sel.zarr")
    score_method({"kind": "select", "methods": list(candidates), "select_rule": {"rule": rule, "resamples": 40}},
                 {"components": stores, "masks": masks_path, "truth": truth}, "val", out, block_rows=4)
    attrs = score_attrs(out)
    preds = [s * masks.astype(float) @ t.T for t, s in candidates.values()]
    expected = _reference_one_se(preds, y, 40, 0, [0, 1])[0] if rule == "one_se" else int(np.argmax([_lds(p, y) for p in preds]))
    assert expected == 1  # the loss-units candidate carries the truth
    assert attrs["selected"] == "loss" and attrs["sign"] == LOSS_UNITS
    assert attrs["chosen"] == f"loss (λ=1), chosen on select ({rule})"
    np.testing.assert_array_equal(read_score_rows(out, 0, n_queries), candidates["loss"][0].astype(np.float32))
    np.testing.assert_allclose(attrs["select_lds"], [_lds(p, y) for p in preds], atol=1e-12)


def test_a_selecting_sweep_adds_a_select_method_over_its_values_its_own_value_first():
    from diffattr.sweeps import expand_sweeps, sweep_rows

    config = {"methods": {"trak": {"kind": "trak", "features": "loss", "lambdas": [1.0]}},
              "features": {"loss": {"timesteps": 10, "projection": {"dim": 256}}},
              "evaluation": {"methods": ["trak"]},
              "sweeps": {"trak_dim": {"method": "trak", "key": "projection.dim", "values": [128, 256, 512], "select": True}}}
    plans = expand_sweeps(config)
    assert config["methods"]["trak_dim_selected"] == {"kind": "select", "methods": ["trak", "trak__dim128", "trak__dim512"]}
    assert config["evaluation"]["methods"] == ["trak", "trak__dim128", "trak__dim512", "trak_dim_selected"]
    assert sweep_rows("trak_dim", config["sweeps"]["trak_dim"], plans["trak_dim"])[-1] == ("chosen on select",
                                                                                           "trak_dim_selected")


def test_a_bad_select_method_is_refused_in_one_sentence_before_any_job(tmp_path):
    from diffattr.cli import merge_configs
    from diffattr.config import ConfigError
    from plans import plan_of

    base = {"output_dir": str(tmp_path / "out"), "counterfactual": {"methods": []},
            "evaluation": {"methods": ["pixel_l2", "random", "s", "t"]},
            "methods": {"s": {"kind": "select", "methods": ["pixel_l2", "t"]},
                        "t": {"kind": "select", "methods": ["pixel_l2", "random"]}}}
    with pytest.raises(ConfigError) as err:
        plan_of(merge_configs(base, {}))
    assert str(err.value) == ("Config key 'methods.s.methods' names 't', which is itself a select; list its "
                              "candidates instead.")
    ok = merge_configs(base, {"methods": {"s": {"methods": ["pixel_l2", "u"]}, "u": {"kind": "stack", "methods": ["pixel_l2", "random"]}},
                              "evaluation": {"methods": ["pixel_l2", "random", "s", "u"]}})
    del ok["methods"]["t"]
    plan = plan_of(ok)  # a select may choose a stack
    assert plan.method_params("s")["select_rule"] == {"rule": "best"}  # config.yaml's evaluation.select
    assert plan.method_inputs("s", "val")["components"][1].endswith("scores/u/val.zarr")


def test_the_lambda_curve_marks_the_one_se_choice_preferring_the_larger_lambda(tmp_path, monkeypatch):
    from test_kernel import stores
    from test_methods import dense_inverse, feature_store, truth_store

    from diffattr.methods.trak import chosen_lambda, lambda_curve

    rng = np.random.default_rng(8)
    phi = rng.normal(size=(30, 6)).astype(np.float32)
    queries = rng.normal(size=(5, 6)).astype(np.float32)
    stores(tmp_path, phi, shard_size=10)
    masks = rng.random((9, 30)) < 0.5
    grid = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
    inv = {lam: dense_inverse(phi, lam) for lam in grid}
    taus = {lam: queries.astype(float) @ inv[lam] @ phi.T.astype(float) for lam in grid}
    y = -(masks.astype(float) @ taus[0.1].T) + rng.normal(size=(9, 5)) * 3.0
    monkeypatch.setattr("diffattr.methods.trak.read_pool", lambda path: masks)
    query_path = feature_store(tmp_path / "q.zarr", queries)
    truth = truth_store(tmp_path / "truth.zarr", y)
    rule = SelectSettings("one_se", resamples=60, seed=3)
    curve = lambda_curve(str(tmp_path / "primal.zarr"), str(tmp_path / "train.zarr"), {"val": query_path},
                         {"select": ("masks", truth)}, grid, select=rule)
    preds = [-(masks.astype(float) @ taus[lam].T) for lam in grid]
    expected, lds, best = _reference_one_se(preds, y, 60, 3, order=list(range(len(grid)))[::-1])
    assert chosen_lambda(curve) == {"val": grid[expected]} and grid[expected] >= grid[best]
    np.testing.assert_allclose(curve["lds"], lds, atol=1e-8)
    argmax = lambda_curve(str(tmp_path / "primal.zarr"), str(tmp_path / "train.zarr"), {"val": query_path},
                          {"select": ("masks", truth)}, grid)
    assert chosen_lambda(argmax) == {"val": grid[best]} and argmax["se"].isna().all()
