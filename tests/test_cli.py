"""The ``diffattr`` command: Snakemake command building, config layering, the responsibility ranking
of ``show-attribution`` (checked against an independent argsort), its PNG and table end to end on
stores written here, its one-sentence errors, and one real dry-run of the smoke config."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO
from diffattr.cli import main, merge_configs, resolve_profile, snakemake_command
from diffattr.data import ImageSet
from diffattr.data.store import write_image_store
from diffattr.methods.registry import HELPS, LOSS_UNITS
from diffattr.scores import write_scores
from diffattr.show import DPI, grid_figsize, rank_training

N_TRAIN, N_VAL, N_GEN = 40, 6, 5


def image_set(rng: np.random.Generator, n: int, labels: np.ndarray | None = None) -> ImageSet:
    images = rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64) if labels is None else labels
    return ImageSet(images, labels, [f"test:{i}" for i in range(n)], [str(c) for c in range(10)])


def score_store(path: Path, scores: np.ndarray, sign: int) -> None:
    write_scores(path, *scores.shape, lambda a, b: scores[a:b], 4, {"sign": sign, "kind": "test"})


@pytest.fixture
def results(tmp_path: Path) -> dict:
    """An output_dir with a dataset (train, val), a generated set, and two score stores of
    opposite signs; plus an overlay config pointing output_dir at it."""
    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    write_image_store(out / "data" / "dataset.zarr", {"train": image_set(rng, N_TRAIN), "val": image_set(rng, N_VAL)})
    write_image_store(out / "data" / "generated.zarr", {"gen": image_set(rng, N_GEN, np.full(N_GEN, -1, dtype=np.int64))})
    helps = rng.standard_normal((N_VAL, N_TRAIN)).astype(np.float32)
    loss = rng.standard_normal((N_GEN, N_TRAIN)).astype(np.float32)
    score_store(out / "scores" / "pixel_l2" / "val.zarr", helps, HELPS)
    score_store(out / "scores" / "empirical_influence" / "gen.zarr", loss, LOSS_UNITS)
    config = tmp_path / "overlay.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(out)}))
    return {"out": out, "config": str(config), "helps": helps, "loss": loss}


# --- command building and config layering -------------------------------------------------------


def test_command_puts_configfile_and_its_files_last_and_includes_the_profile():
    profile = resolve_profile("slurm", REPO)
    assert profile == REPO / "profiles" / "slurm"
    cmd = snakemake_command(profile, ["/a/smoke.yaml", "/b/mine.yaml"], cores=3, dry_run=True,
                            extra=["lds_table", "--forcerun", "score"])
    assert cmd[:3] == [sys.executable, "-m", "snakemake"]
    assert cmd[cmd.index("--profile") + 1] == str(profile)
    assert cmd[cmd.index("--cores") + 1] == "3"
    assert cmd[-3:] == ["--configfile", "/a/smoke.yaml", "/b/mine.yaml"]
    assert cmd.count("--configfile") == 1
    # targets and every other option come before --configfile, which would swallow them
    for arg in ["lds_table", "--forcerun", "score", "-n", "--quiet", "rules", "--profile", "--cores"]:
        assert cmd.index(arg) < cmd.index("--configfile")
    # --quiet takes any number of values: nothing the user passed may follow it
    assert cmd.index("lds_table") < cmd.index("--quiet")
    assert "--configfile" not in snakemake_command(profile)
    report = snakemake_command(profile, ["/c.yaml"], report="/r/report.html")
    assert report[report.index("--report") + 1] == "/r/report.html" and report[-2:] == ["--configfile", "/c.yaml"]


class FakePopen:
    """Stands in for subprocess.Popen: records the command instead of running Snakemake."""

    calls: list[tuple[list[str], Path]] = []

    def __init__(self, cmd, cwd):
        FakePopen.calls.append((cmd, cwd))

    def wait(self):
        return 3


def test_run_and_report_print_and_run_the_built_command(results, tmp_path, monkeypatch, capsys):
    import diffattr.cli

    monkeypatch.setattr(diffattr.cli.subprocess, "Popen", FakePopen)
    FakePopen.calls.clear()
    assert main(["run", "--config", results["config"], "--cores", "4", "--", "lds_table", "--forcerun", "score"]) == 3
    cmd, cwd = FakePopen.calls[-1]
    assert cwd == REPO
    assert cmd == [sys.executable, "-m", "snakemake", "lds_table", "--forcerun", "score",
                   "--profile", str(REPO / "profiles" / "local"), "--cores", "4", "--configfile", results["config"]]
    import shlex

    assert capsys.readouterr().out.strip() == f"cd {shlex.quote(str(REPO))} && {shlex.join(cmd)}"
    assert main(["report", "--config", results["config"], "--profile", "slurm"]) == 3
    cmd, _ = FakePopen.calls[-1]
    assert cmd[cmd.index("--report") + 1] == str(results["out"] / "report.html")  # default: {output_dir}/report.html
    assert cmd[cmd.index("--profile") + 1] == str(REPO / "profiles" / "slurm")
    assert cmd[-2:] == ["--configfile", results["config"]]
    assert main(["report", "--output", str(tmp_path / "r.html")]) == 3
    assert FakePopen.calls[-1][0][-2:] == ["--report", str(tmp_path / "r.html")]


def test_a_whole_run_that_succeeds_also_writes_the_report(results, monkeypatch, capsys):
    import diffattr.cli

    monkeypatch.setattr(diffattr.cli.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(FakePopen, "wait", lambda self: 0)
    FakePopen.calls.clear()
    assert main(["run", "--config", results["config"]]) == 0
    (run, _), (report, _) = FakePopen.calls
    assert "--report" not in run
    assert report == [sys.executable, "-m", "snakemake", "--profile", str(REPO / "profiles" / "local"),
                      "--report", str(results["out"] / "report.html"), "--configfile", results["config"]]
    assert capsys.readouterr().out.strip().endswith(f"report: {results['out'] / 'report.html'}")
    FakePopen.calls.clear()
    assert main(["run", "--config", results["config"], "--", "lds_table"]) == 0  # a partial run: no report
    assert len(FakePopen.calls) == 1


def test_run_repairs_an_interrupted_replace_before_snakemake_builds_its_dag(results, monkeypatch, capsys):
    """A kill between "old output aside" and "new output in" (diffattr/atomic.py) leaves only the aside:
    ``diffattr run`` renames it back before Snakemake starts, so the finished output is not re-made."""
    import diffattr.cli

    table = results["out"] / "lds.csv"
    aside = table.with_name(".lds.csv.aside-0123abcd")
    aside.write_text("method,lds\ntrak,0.1\n")
    stale = results["out"] / "scores" / ".gen.zarr.tmp-89abcdef"
    stale.mkdir()
    seen = []
    monkeypatch.setattr(diffattr.cli.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(FakePopen, "wait", lambda self: seen.append(table.exists()) or 3)
    assert main(["run", "--config", results["config"], "--", "lds_table"]) == 3
    assert seen == [True]  # restored before the (fake) snakemake ran
    assert table.read_text() == "method,lds\ntrak,0.1\n" and not aside.exists() and not stale.exists()
    assert "restored 1 output(s)" in capsys.readouterr().out


def test_configfile_after_double_dash_is_refused(capsys):
    assert main(["run", "--", "--configfile", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Pass config files with --config" in err and "Traceback" not in err


def test_unknown_profile_and_missing_config_file_are_one_sentence_errors(tmp_path, capsys):
    assert main(["dry-run", "--profile", str(tmp_path / "nope")]) == 2
    assert "Profile" in capsys.readouterr().err
    assert main(["dry-run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml' does not exist" in capsys.readouterr().err
    assert main(["run", "--workdir", str(tmp_path)]) == 2
    assert "There is no Snakefile in" in capsys.readouterr().err


def test_config_merging_is_recursive():
    base = {"output_dir": "results", "data": {"source": "digits", "n_train": None, "extra": {"a": 1, "b": 2}},
            "evaluation": {"methods": ["a", "b"]}}
    over = {"data": {"n_train": 300, "extra": {"b": 3}}, "evaluation": {"methods": ["c"]}}
    last = {"output_dir": "elsewhere", "data": {"extra": {"c": 4}}}
    merged = merge_configs(base, over, last)
    assert merged == {"output_dir": "elsewhere",
                      "data": {"source": "digits", "n_train": 300, "extra": {"a": 1, "b": 3, "c": 4}},
                      "evaluation": {"methods": ["c"]}}  # lists are replaced, not concatenated
    assert base["data"]["extra"] == {"a": 1, "b": 2}  # inputs untouched
    assert merge_configs({"x": 1}, {"x": {"y": 2}}) == {"x": {"y": 2}}  # a mapping replaces a scalar


# --- ranking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [HELPS, LOSS_UNITS])
def test_ranking_matches_an_independent_argsort_of_responsibility(tmp_path, sign):
    import zarr

    rng = np.random.default_rng(1 + sign)
    scores = rng.standard_normal((3, 50)).astype(np.float32)
    score_store(tmp_path / "s.zarr", scores, sign)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    stored_sign = int(root.attrs["sign"])
    row = np.asarray(root["scores"][2])
    top, bottom = rank_training(row, stored_sign, 7)
    # responsibility = how much including z lowers the sample's loss: the LDS predicts the change as sign·τ
    expected = -sign * scores[2].astype(np.float64)
    assert top.index.tolist() == np.argsort(expected)[::-1][:7].tolist()
    assert bottom.index.tolist() == np.argsort(expected)[:7].tolist()
    assert top.rank.tolist() == list(range(1, 8)) and bottom.rank.tolist() == list(range(50, 43, -1))
    np.testing.assert_array_equal(top.score, scores[2][top.index])
    if sign == HELPS:  # larger score = helps
        assert top.index[0] == np.argmax(scores[2])
    else:  # loss units: the most negative change in loss is the most responsible
        assert top.index[0] == np.argmin(scores[2])
    assert len(rank_training(row, sign, 500)[0].index) == 50  # k capped at N


# --- show-attribution end to end ----------------------------------------------------------------


def table_indices(text: str, heading: str) -> list[int]:
    section = text.split(heading)[1].split("\n\n")[0]
    return [int(m.group(1)) for m in re.finditer(r"^\s*\d+\s+(\d+)\s", section, re.M)]


@pytest.mark.parametrize("method, query_set, sample, sign", [("pixel_l2", "val", 4, HELPS),
                                                             ("empirical_influence", "gen", 1, LOSS_UNITS)])
def test_show_attribution_end_to_end(results, capsys, method, query_set, sample, sign):
    k = 5
    assert main(["show-attribution", "--config", results["config"], "--sample", str(sample),
                 "--method", method, "--set", query_set, "--top", str(k)]) == 0
    out = capsys.readouterr().out
    row = results["helps" if sign == HELPS else "loss"][sample].astype(np.float64)
    order = np.argsort(-sign * row)  # ascending responsibility
    assert table_indices(out, "proponents") == order[::-1][:k].tolist()
    assert table_indices(out, "opponents") == order[:k].tolist()
    assert f"sign {sign:+d}" in out
    png = results["out"] / "attribution" / f"{method}_{query_set}_{sample}.png"
    assert f"wrote {png}" in out
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = grid_figsize(k)
        assert image.size == (round(width * DPI), round(height * DPI))
        assert image.size[0] > image.size[1]  # a wide grid: sample + k tiles per row, two rows


def test_show_attribution_output_option(results, tmp_path, capsys):
    png = tmp_path / "custom" / "grid.png"
    assert main(["show-attribution", "--config", results["config"], "--sample", "0", "--method", "pixel_l2",
                 "--top", "3", "--output", str(png)]) == 0
    assert png.is_file() and f"wrote {png}" in capsys.readouterr().out
    with Image.open(png) as image:
        assert image.size == tuple(round(v * DPI) for v in grid_figsize(3))


def assert_error(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and captured.out == ""
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_show_attribution_errors(results, capsys):
    config = ["--config", results["config"]]
    out = results["out"]
    assert_error(capsys, ["show-attribution", *config, "--sample", "0", "--method", "nope"],
                 str(out / "scores" / "nope" / "val.zarr"), "diffattr run", "Unknown method 'nope'")
    assert_error(capsys, ["show-attribution", *config, "--sample", "0", "--method", "pixel_l2", "--set", "gen"],
                 str(out / "scores" / "pixel_l2" / "gen.zarr"), "must be run", "diffattr run")
    assert_error(capsys, ["show-attribution", *config, "--sample", "0", "--method", "pixel_l2", "--set", "train"],
                 "Unknown set 'train'")
    assert_error(capsys, ["show-attribution", *config, "--sample", str(N_VAL), "--method", "pixel_l2"],
                 f"Sample {N_VAL} is out of range", f"{N_VAL} attributed samples")
    assert_error(capsys, ["show-attribution", *config, "--sample", "-1", "--method", "pixel_l2"], "out of range")
    assert_error(capsys, ["show-attribution", *config, "--sample", "0", "--method", "pixel_l2", "--top", "0"],
                 "--top must be at least 1")
    import shutil

    shutil.rmtree(out / "data" / "dataset.zarr")
    assert_error(capsys, ["show-attribution", *config, "--sample", "0", "--method", "pixel_l2"],
                 f"No image store at {out / 'data' / 'dataset.zarr'}")


def test_argparse_usage_errors_return_2(capsys):
    assert main(["show-attribution", "--method", "pixel_l2"]) == 2  # --sample is required
    assert "--sample" in capsys.readouterr().err
    assert main([]) == 2


# --- a real dry-run -----------------------------------------------------------------------------


def test_dry_run_of_the_smoke_config_prints_the_command_and_the_job_table(tmp_path, capfd):
    overlay = tmp_path / "out.yaml"
    overlay.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "results")}))
    assert main(["dry-run", "--config", "config/smoke.yaml", str(overlay)]) == 0
    out = capfd.readouterr().out
    command = out.splitlines()[0]
    assert command.startswith(f"cd {REPO} && ")
    assert command.endswith(f"--configfile {REPO / 'config' / 'smoke.yaml'} {overlay}")
    assert f"--profile {REPO / 'profiles' / 'local'}" in command and " -n --quiet rules " in command
    assert re.search(r"^train_model\s+\d+$", out, re.M), out
    assert not (tmp_path / "results").exists()  # a dry-run writes nothing
