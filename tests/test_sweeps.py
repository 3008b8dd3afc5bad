"""Ablation sweeps (diffattr/sweeps.py): one knob of one method over a list of values, each value a
derived method sharing everything the value does not change."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from diffattr.config import ConfigError, load_yaml
from diffattr.sweeps import expand_sweeps, sweep_table

BASE = load_yaml(REPO / "config.yaml")


def with_sweeps(sweeps: dict, evaluated: list | None = None) -> dict:
    config = copy.deepcopy(BASE)
    config["sweeps"] = sweeps
    config["evaluation"]["methods"] = evaluated
    return config


def test_a_feature_knob_derives_a_spec_and_a_method_and_the_own_value_is_the_method_itself():
    config = with_sweeps({"k": {"method": "dtrak", "key": "projection.dim", "values": [512, 2048, 4096]}}, ["dtrak", "pixel_l2"])
    plans = expand_sweeps(config)
    assert [(p["value"], p["method"]) for p in plans["k"]] == [(512, "dtrak__dim512"), (2048, "dtrak"), (4096, "dtrak__dim4096")]
    for dim in (512, 4096):
        spec = config["features"][f"square__dim{dim}"]
        expected = copy.deepcopy(BASE["features"]["square"])
        expected["projection"]["dim"] = dim
        assert spec == expected  # the base spec with one value changed
        assert config["methods"][f"dtrak__dim{dim}"] == {**BASE["methods"]["dtrak"], "features": f"square__dim{dim}"}
    assert config["features"]["square"] == BASE["features"]["square"]  # the base is untouched
    assert config["evaluation"]["methods"] == ["dtrak", "pixel_l2", "dtrak__dim512", "dtrak__dim4096"]


def test_a_method_knob_derives_a_method_only():
    config = with_sweeps({"lam": {"method": "trak", "key": "lambdas", "values": [[0.1, 1.0], [10.0]]},
                          "t": {"method": "influence_lissa", "key": "damping", "values": [0.01, 0.001]}})
    specs = set(config["features"])
    plans = expand_sweeps(config)
    assert set(config["features"]) == specs
    assert [p["method"] for p in plans["lam"]] == ["trak__lambdas0_1_1", "trak__lambdas10"]
    assert config["methods"]["trak__lambdas10"] == {**BASE["methods"]["trak"], "lambdas": [10.0]}
    assert [p["method"] for p in plans["t"]] == ["influence_lissa__damping0_01", "influence_lissa"]
    assert config["evaluation"]["methods"] is None  # null: every block, the derived ones included


@pytest.mark.parametrize("sweep,sentence", [
    ({"method": "nope", "key": "timesteps", "values": [1]},
     "Config key 'sweeps.s.method' names 'nope', which is not a block under methods."),
    ({"method": "trak", "key": "projection.depth", "values": [1]},
     "Config key 'sweeps.s.key' is 'projection.depth', which neither methods.trak nor its feature spec sets."),
    ({"method": "pixel_l2", "key": "timesteps", "values": [1]},
     "Config key 'sweeps.s.key' is 'timesteps', which neither methods.pixel_l2 nor its feature spec sets."),
])
def test_bad_sweeps_are_one_sentence_errors(sweep, sentence):
    with pytest.raises(ConfigError) as err:
        expand_sweeps(with_sweeps({"s": sweep}))
    assert str(err.value) == sentence


def test_a_null_sweep_is_dropped():
    config = with_sweeps({"gone": None, "t": {"method": "dtrak", "key": "timesteps", "values": [20]}})
    assert list(expand_sweeps(config)) == ["t"]


def test_a_derived_name_clashing_with_another_block_is_refused():
    config = with_sweeps({"s": {"method": "trak", "key": "timesteps", "values": [20]}})
    config["methods"]["trak__timesteps20"] = {"kind": "random", "seed": 0}
    with pytest.raises(ConfigError, match="already defines"):
        expand_sweeps(config)


def test_sweep_table_gathers_the_points_rows(tmp_path):
    paths = []
    for i, method in enumerate(["dtrak__dim512", "dtrak"]):
        path = tmp_path / f"{method}.csv"
        pd.DataFrame({"method": method, "kind": "trak", "set": ["val", "gen"], "lds": [0.1 + i, 0.2 + i],
                      "std": 0.01, "ci_low": [0.05 + i, 0.15 + i], "ci_high": [0.15 + i, 0.25 + i], "n_subsets": 8,
                      "n_queries": 40, "sign": -1, "chosen": "λ=0.1 (select pool)", "seconds": 3.0}).to_csv(path, index=False)
        paths.append(str(path))
    table = sweep_table("k", "projection.dim", [(512, "dtrak__dim512"), (2048, "dtrak")], paths)
    assert table[["method", "value", "set", "lds"]].values.tolist() == [
        ["dtrak__dim512", "512", "val", 0.1], ["dtrak__dim512", "512", "gen", 0.2],
        ["dtrak", "2048", "val", 1.1], ["dtrak", "2048", "gen", 1.2]]
    assert (table["key"] == "projection.dim").all() and (table["chosen"] == "λ=0.1 (select pool)").all()


def test_a_projection_seed_sweep_reports_the_spread_over_seeds(tmp_path):
    """Issue 18 item 5: the summary rows' ± is the std across seeds (numpy's, ddof 1), and they say
    so; each seed's own row keeps its bootstrap std."""
    lds = {"trak": (0.132, 0.05), "trak__seed43": (0.150, 0.07), "trak__seed44": (0.141, 0.02)}
    paths = []
    for method, (v, g) in lds.items():
        path = tmp_path / f"{method}.csv"
        pd.DataFrame({"method": method, "kind": "trak", "set": ["val", "gen"], "lds": [v, g], "std": [0.01, 0.03],
                      "ci_low": 0.0, "ci_high": 0.3, "chosen": "λ=1"}).to_csv(path, index=False)
        paths.append(str(path))
    table = sweep_table("seeds", "projection.seed", [(42, "trak"), (43, "trak__seed43"), (44, "trak__seed44")], paths)
    summary = table[table["value"] == "mean ± std over seeds"].set_index("set")
    assert len(table) == 8 and list(summary.index) == ["val", "gen"]
    vals = np.asarray([0.132, 0.150, 0.141])
    assert summary.loc["val", "lds"] == pytest.approx(vals.mean())
    assert summary.loc["val", "std"] == pytest.approx(vals.std(ddof=1))
    assert summary.loc["val", "ci_high"] - summary.loc["val", "ci_low"] == pytest.approx(2 * vals.std(ddof=1))
    assert summary.loc["gen", "method"] == "trak" and "std over 3 seeds" in summary.loc["gen", "chosen"]
    assert "bootstrap over subsets, mean 0.030" in summary.loc["gen", "chosen"]


def test_a_grid_sweeps_knobs_jointly_and_shares_its_points_with_one_knob_sweeps():
    """Issue 18 item 1: a grid is the product of its lists; a point's name lists the knobs it
    changes, so the points a one-knob sweep also has are the same blocks (no clash, no new job)."""
    config = with_sweeps({"k": {"method": "dtrak", "key": "projection.dim", "values": [2048, 4096]},
                          "kt": {"method": "dtrak", "grid": {"timesteps": [10, 20], "projection.dim": [2048, 4096]},
                                 "select": True}}, ["dtrak"])
    plans = expand_sweeps(config)
    assert [(p["value"], p["method"]) for p in plans["kt"]] == [
        ({"projection.dim": 2048, "timesteps": 10}, "dtrak"),
        ({"projection.dim": 2048, "timesteps": 20}, "dtrak__timesteps20"),
        ({"projection.dim": 4096, "timesteps": 10}, "dtrak__dim4096"),
        ({"projection.dim": 4096, "timesteps": 20}, "dtrak__dim4096__timesteps20")]
    assert plans["k"][1]["method"] == "dtrak__dim4096"  # the one-knob sweep's point is the grid's
    both = copy.deepcopy(BASE["features"]["square"])
    both["projection"]["dim"], both["timesteps"] = 4096, 20
    assert config["features"]["square__dim4096__timesteps20"] == both
    assert config["methods"]["dtrak__dim4096__timesteps20"] == {**BASE["methods"]["dtrak"],
                                                               "features": "square__dim4096__timesteps20"}
    assert config["methods"]["kt_selected"] == {"kind": "select", "methods": [
        "dtrak", "dtrak__timesteps20", "dtrak__dim4096", "dtrak__dim4096__timesteps20"]}
    assert config["evaluation"]["methods"] == ["dtrak", "dtrak__dim4096", "dtrak__timesteps20",
                                               "dtrak__dim4096__timesteps20", "kt_selected"]


def test_a_grid_over_a_method_knob_and_a_feature_knob_derives_one_spec_per_feature_value():
    config = with_sweeps({"g": {"method": "trak", "grid": {"lambdas": [[0.1], [1.0]], "projection.dim": [512, 1024]}}})
    spec = BASE["methods"]["trak"]["features"]
    plans = expand_sweeps(config)
    assert [p["method"] for p in plans["g"]] == ["trak__lambdas0_1__dim512", "trak__lambdas0_1__dim1024",
                                                 "trak__lambdas1__dim512", "trak__lambdas1__dim1024"]
    assert {p["spec"] for p in plans["g"]} == {f"{spec}__dim512", f"{spec}__dim1024"}
    assert config["methods"]["trak__lambdas1__dim512"] == {**BASE["methods"]["trak"], "lambdas": [1.0],
                                                           "features": f"{spec}__dim512"}


@pytest.mark.parametrize("sweep,sentence", [
    ({"method": "dtrak", "key": "timesteps", "values": [5], "grid": {"timesteps": [5]}},
     "Config key 'sweeps.s' must set either 'key' with 'values' (one knob) or 'grid' (knob → values); it sets both."),
    ({"method": "dtrak"},
     "Config key 'sweeps.s' must set either 'key' with 'values' (one knob) or 'grid' (knob → values); it sets neither."),
    ({"method": "dtrak", "key": "timesteps"},
     "Config key 'sweeps.s' must set either 'key' with 'values' (one knob) or 'grid' (knob → values); it sets 'key' "
     "alone."),
    ({"method": "dtrak", "grid": {"timesteps": [5], "projection.depth": [1]}},
     "Config key 'sweeps.s.grid.projection.depth' is 'projection.depth', which neither methods.dtrak nor its "
     "feature spec sets."),
])
def test_bad_grids_are_one_sentence_errors(sweep, sentence):
    with pytest.raises(ConfigError) as err:
        expand_sweeps(with_sweeps({"s": sweep}))
    assert str(err.value) == sentence


def test_a_grid_sweep_table_names_its_knobs_and_each_point(tmp_path):
    from diffattr.sweeps import sweep_key

    path = tmp_path / "m.csv"
    pd.DataFrame({"method": "m", "set": ["val"], "lds": [0.2], "std": 0.01, "ci_low": 0.1, "ci_high": 0.3,
                  "chosen": "λ=1"}).to_csv(path, index=False)
    key = sweep_key("g", {"method": "dtrak", "grid": {"timesteps": [20], "projection.dim": [4096]}})
    table = sweep_table("g", key, [({"projection.dim": 4096, "timesteps": 20}, "m")], [str(path)])
    assert key == "projection.dim × timesteps"
    assert table[["key", "value"]].values.tolist() == [["projection.dim × timesteps", "dim=4096, timesteps=20"]]
