"""The report's figures (diffattr.plots): the data each figure draws, and that each writes a PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffattr import plots

NAN = float("nan")
LDS_COLUMNS = ["method", "kind", "set", "lds", "std", "ci_low", "ci_high", "n_subsets", "n_queries", "sign",
               "chosen", "seconds"]
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def assert_png(path: Path) -> np.ndarray:
    """``path`` is a readable, non-blank PNG and the only file in its folder; returns its pixels."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 100 and image.shape[1] >= 100
    assert image[..., :3].std() > 0  # something was drawn
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    return image


def lds_row(method, kind, split, lds, low=NAN, high=NAN):
    return {"method": method, "kind": kind, "set": split, "lds": lds, "std": 0.01, "ci_low": low, "ci_high": high,
            "n_subsets": 32, "n_queries": 200, "sign": -1, "chosen": "", "seconds": 1.0}


@pytest.fixture
def lds_table() -> pd.DataFrame:
    rows = [
        lds_row("ground_truth_split_half", "ceiling", "gen", 0.70),
        lds_row("ground_truth_split_half", "ceiling", "val", 0.72),
        lds_row("a", "trak", "val", 0.30, 0.25, 0.35),
        lds_row("a", "trak", "gen", 0.05, 0.01, 0.09),
        lds_row("b", "pixel", "gen", 0.20, 0.10, 0.30),
        lds_row("b", "pixel", "val", 0.10),  # no CI
        lds_row("c", "gradient", "val", 0.50, 0.40, 0.60),  # val only: after every method with a gen LDS
        lds_row("d", "random", "gen", -0.02, -0.05, 0.01),
        lds_row("d", "random", "val", 0.00, -0.03, 0.03),
        lds_row("e", "gradient", "val", 0.60, 0.50, 0.70),
        lds_row("trak (oracle λ)", "oracle", "gen", 0.90),
        lds_row("trak [oracle λ, tuned on lds pool]", "diagnostic", "val", 0.95),
    ]
    return pd.DataFrame(rows, columns=LDS_COLUMNS)


def test_lds_plot_data_drops_ceiling_and_oracle_rows_and_orders_by_gen_then_val(lds_table):
    data = plots.lds_plot_data(lds_table)
    assert list(data.columns) == ["method", "set", "lds", "ci_low", "ci_high"]
    assert list(zip(data["method"], data["set"])) == [
        ("b", "val"), ("b", "gen"), ("a", "val"), ("a", "gen"), ("d", "val"), ("d", "gen"), ("e", "val"),
        ("c", "val")]
    assert data["lds"].tolist() == [0.10, 0.20, 0.30, 0.05, 0.00, -0.02, 0.60, 0.50]
    assert math.isnan(data["ci_low"].iloc[0]) and data["ci_high"].iloc[1] == 0.30


def test_lds_plot_data_without_gen_sorts_by_val(lds_table):
    data = plots.lds_plot_data(lds_table[lds_table["set"] == "val"])
    assert list(data["method"]) == ["e", "c", "a", "b", "d"]


def test_lds_ceilings(lds_table):
    assert plots.lds_ceilings(lds_table) == {"gen": 0.70, "val": 0.72}
    assert plots.lds_ceilings(lds_table[lds_table["kind"] != "ceiling"]) == {}


def test_lds_bars_writes_a_png_whose_height_grows_with_the_methods(lds_table, tmp_path):
    few = assert_png_after(plots.lds_bars, lds_table[lds_table["method"].isin(["a", "b"])], tmp_path / "few")
    many = assert_png_after(plots.lds_bars, lds_table, tmp_path / "many")
    assert many.shape[0] > few.shape[0]
    assert many.shape[1] == 700
    assert_png_after(plots.lds_bars, lds_table.iloc[:0], tmp_path / "empty")


def assert_png_after(draw, data, folder: Path, *args, **kwargs) -> np.ndarray:
    path = folder / "figure.png"
    draw(data, path, *args, **kwargs)
    return assert_png(path)


def sweep(values: dict[tuple[str, str], list[float]], chosen: float, lambdas=(0.01, 0.1, 1.0)) -> pd.DataFrame:
    rows = [{"set": s, "pool": p, "lambda": lam, "lambda_abs": 10 * lam, "lds": v, "chosen": lam == chosen}
            for (s, p), lds in values.items() for lam, v in zip(lambdas, lds)]
    return pd.DataFrame(rows)


def test_lambda_series_filters_one_set_and_pool_sorts_by_lambda_and_finds_the_chosen():
    curve = pd.DataFrame({
        "set": ["val", "val", "val", "gen", "val", "val"],
        "pool": ["select", "select", "select", "select", "lds", "select"],
        "lambda": [1.0, 0.01, 0.1, 0.1, 0.1, 0.0],
        "lambda_abs": [10.0, 0.1, 1.0, 1.0, 1.0, 0.0],
        "lds": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "chosen": ["False", "False", "True", "True", "True", "False"],  # as strings, like a re-read CSV
    })
    rows, chosen = plots.lambda_series(curve, "val", "select")
    assert rows["lambda"].tolist() == [0.01, 0.1, 1.0]  # λ = 0 cannot go on a log axis
    assert rows["lds"].tolist() == [0.2, 0.3, 0.1]
    assert chosen["lambda"].tolist() == [0.1] and chosen["lds"].tolist() == [0.3]
    rows, chosen = plots.lambda_series(curve.assign(chosen=curve["chosen"] == "True"), "gen", "lds")
    assert rows.empty and chosen.empty


def test_lambda_curves_writes_a_png(tmp_path):
    curves = {
        "trak": sweep({("val", "select"): [0.1, 0.3, 0.2], ("val", "lds"): [0.1, 0.2, 0.2],
                       ("gen", "select"): [0.0, 0.1, 0.2], ("gen", "lds"): [0.0, 0.1, 0.1]}, chosen=0.1),
        "dtrak": sweep({("val", "select"): [0.3, 0.2, 0.1], ("gen", "select"): [0.2, 0.1, 0.0]}, chosen=0.01),
    }
    assert_png_after(plots.lambda_curves, curves, tmp_path / "two")
    assert_png_after(plots.lambda_curves, {}, tmp_path / "none")


def counterfactual_results() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = [{"method": m, "sample": s, "k": k, "seed": 0, "pixel_l2": rng.uniform(2, 8), "embedding_cosine": NAN,
             "loss_original": 1.0, "loss_retrained": 1.1, "loss_change": rng.normal(0.1, 0.05)}
            for m in ("trak", "random_removal", "das") for k in (10, 5) for s in range(4)]
    return pd.DataFrame(rows)


def test_counterfactual_groups_put_the_control_first_within_each_k():
    assert plots.counterfactual_groups(counterfactual_results()) == [
        ("random_removal", 5), ("das", 5), ("trak", 5), ("random_removal", 10), ("das", 10), ("trak", 10)]


def test_counterfactual_metrics_skip_all_nan_columns():
    results = counterfactual_results()
    assert [c for c, _ in plots.counterfactual_metrics(results)] == ["pixel_l2", "loss_change"]
    results.loc[0, "embedding_cosine"] = 0.9
    assert [c for c, _ in plots.counterfactual_metrics(results)] == ["pixel_l2", "embedding_cosine", "loss_change"]


def test_counterfactual_plot_writes_a_png(tmp_path):
    results = counterfactual_results()
    results.loc[results["method"] == "das", "loss_change"] = NAN  # a box with no finite values
    assert_png_after(plots.counterfactual_plot, results, tmp_path / "some")
    nothing = results.assign(pixel_l2=NAN, loss_change=NAN)
    assert_png_after(plots.counterfactual_plot, nothing, tmp_path / "nothing")


def trajectory_steps(n: int = 50) -> pd.DataFrame:
    step = np.arange(n)
    lds = np.linspace(-0.02, 0.05, n)
    return pd.DataFrame({"step": step, "timestep": 980 - 20 * step, "lds": lds, "std": 0.01,
                         "ci_low": lds - 0.02, "ci_high": lds + 0.02})


def test_step_ticks_span_the_steps_and_label_their_timesteps():
    ticks, labels = plots.step_ticks(trajectory_steps().iloc[::-1])
    assert ticks[0] == 0 and ticks[-1] == 49 and len(ticks) == 6 and ticks == sorted(ticks)
    assert labels[0] == "0\n(t=980)" and labels[-1] == "49\n(t=0)"
    assert plots.step_ticks(trajectory_steps(3)) == ([0, 1, 2], ["0\n(t=980)", "1\n(t=960)", "2\n(t=940)"])


@pytest.mark.parametrize("overall", [None, 0.036])
def test_trajectory_plot_writes_a_png(tmp_path, overall):
    assert_png_after(plots.trajectory_plot, trajectory_steps(), tmp_path, overall=overall)


@pytest.fixture
def benchmark_root(tmp_path) -> Path:
    bench = tmp_path / "results" / "benchmarks"
    files = {
        "generate.tsv": "27.58\t0:00:27\t461.48\t916.40\t1\t1\t0\t0\t22\t6\n",
        "score/trak/gen.tsv": "10.0\t0:00:10\t200.0\t1\t1\t1\t0\t0\t1\t1\n",
        "score/trak/val.tsv": "30.0\t0:00:30\t300.0\t1\t1\t1\t0\t0\t1\t1\n",
        "score/das.tsv": "2.0\t0:00:02\t100.0\t1\t1\t1\t0\t0\t1\t1\n4.0\t0:00:04\t150.0\t1\t1\t1\t0\t0\t1\t1\n",
        "measure_outputs/retrain/3/seed0.tsv": "5.0\t0:00:05\tNA\t-\t-\t-\t-\t-\t-\t-\n",
        "measure_outputs/retrain/12/seed0.tsv": "7.0\t0:00:07\t-\t-\t-\t-\t-\t-\t-\t-\n",
    }
    for name, body in files.items():
        (bench / name).parent.mkdir(parents=True, exist_ok=True)
        (bench / name).write_text(BENCH_HEADER + body)
    (bench / "score" / "notes.txt").write_text("not a benchmark\n")
    return tmp_path / "results"


def test_read_benchmarks_one_row_per_file(benchmark_root):
    expected = pd.DataFrame({
        "rule": ["generate", "measure_outputs", "measure_outputs", "score", "score", "score"],
        "job": ["", "retrain/12/seed0", "retrain/3/seed0", "das", "trak/gen", "trak/val"],
        "seconds": [27.58, 7.0, 5.0, 3.0, 10.0, 30.0],
        "max_rss_mb": [461.48, NAN, NAN, 150.0, 200.0, 300.0],
    })
    pd.testing.assert_frame_equal(plots.read_benchmarks(benchmark_root), expected)
    pd.testing.assert_frame_equal(plots.read_benchmarks(str(benchmark_root)), expected)


def test_read_benchmarks_without_a_benchmarks_folder_is_empty(tmp_path):
    table = plots.read_benchmarks(tmp_path)
    assert table.empty and list(table.columns) == ["rule", "job", "seconds", "max_rss_mb"]
    assert plots.runtime_table(table).empty


def test_runtime_table_by_hand(benchmark_root):
    expected = pd.DataFrame({
        "rule": ["score", "generate", "measure_outputs"],
        "jobs": [3, 1, 2],
        "seconds_total": [43.0, 27.58, 12.0],
        "seconds_mean": [43.0 / 3, 27.58, 6.0],
        "seconds_max": [30.0, 27.58, 7.0],
        "max_rss_mb": [300.0, 461.48, NAN],
    })
    pd.testing.assert_frame_equal(plots.runtime_table(plots.read_benchmarks(benchmark_root)), expected)


def test_runtime_table_matches_a_groupby():
    rng = np.random.default_rng(7)
    bench = pd.DataFrame({"rule": rng.choice(["a", "b", "c", "d"], 40), "job": [f"j{i}" for i in range(40)],
                          "seconds": rng.uniform(0, 100, 40), "max_rss_mb": rng.uniform(100, 900, 40)})
    table = plots.runtime_table(bench).set_index("rule")
    group = bench.groupby("rule")
    assert list(table.index) == list(group["seconds"].sum().sort_values(ascending=False).index)
    np.testing.assert_array_equal(table["jobs"], group.size()[table.index])
    np.testing.assert_allclose(table["seconds_total"], group["seconds"].sum()[table.index])
    np.testing.assert_allclose(table["seconds_mean"], group["seconds"].mean()[table.index])
    np.testing.assert_allclose(table["seconds_max"], group["seconds"].max()[table.index])
    np.testing.assert_allclose(table["max_rss_mb"], group["max_rss_mb"].max()[table.index])


def test_runtime_plot_writes_a_png(benchmark_root, tmp_path):
    summary = plots.runtime_table(plots.read_benchmarks(benchmark_root))
    assert_png_after(plots.runtime_plot, summary, tmp_path / "some")
    assert_png_after(plots.runtime_plot, summary.iloc[:0], tmp_path / "none")


def test_sweep_plot_writes_a_png(tmp_path):
    from diffattr.plots import sweep_plot

    table = pd.DataFrame({"sweep": "k", "method": ["m__dim8", "m__dim8", "m", "m"], "key": "projection.dim",
                          "value": ["8", "8", "16", "16"], "set": ["val", "gen", "val", "gen"],
                          "lds": [0.1, 0.05, 0.2, 0.1], "std": 0.01, "ci_low": [0.05, np.nan, 0.15, 0.05],
                          "ci_high": [0.15, np.nan, 0.25, 0.15], "chosen": ""})
    sweep_plot(table, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_grid_sweep_plot_writes_a_png(tmp_path):
    from diffattr.plots import sweep_plot

    table = pd.DataFrame({"sweep": "g", "method": ["m", "m__dim8__timesteps20"], "key": "projection.dim × timesteps",
                          "value": ["dim=16, timesteps=10", "dim=8, timesteps=20"], "set": "val",
                          "lds": [0.1, 0.2], "std": 0.01, "ci_low": [0.05, 0.15], "ci_high": [0.15, 0.25], "chosen": ""})
    sweep_plot(table, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
