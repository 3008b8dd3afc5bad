"""Same config → same bytes, and a killed run recovers to those bytes (README "Guarantees").

The workflow tests run ``tests/configs/tiny.yaml`` (the pipeline's spine, 48 jobs) twice into the
same output directory (moved aside in between): once uninterrupted, once through the kill soak
(``tests/soak.py``: 3 SIGKILLs of the whole Snakemake process group, each recovered with ``--unlock``
+ ``--rerun-incomplete``), and compare the two file by file. Only the timing files (``soak.TIMING``:
logs/, benchmarks/, report/runtime.*) may differ.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import soak
from conftest import SCHEDULER, TINY_UNET, train_ddpm


# ------------------------------------------------------------------------------------ fast tier

def test_differing_files_names_changed_missing_and_extra_files_but_not_timings(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "eval").mkdir(parents=True)
        (root / "eval" / "same.csv").write_bytes(b"x,y\n1,2\n")
        (root / "changed.csv").write_bytes(b"1.0\n")
        (root / "logs").mkdir()
        (root / "benchmarks" / "score").mkdir(parents=True)
        (root / "report").mkdir()
    (b / "changed.csv").write_bytes(b"1.00\n")  # one byte more
    (a / "only_a.zarr").mkdir()
    (a / "only_a.zarr" / "zarr.json").write_text("{}")
    (b / "eval" / ".same.csv.tmp-1234abcd").write_text("half")  # a leftover is a difference too
    (a / "logs" / "job.log").write_text("12 s")
    (b / "benchmarks" / "score" / "m.tsv").write_text("s\n3.2\n")
    (a / "report" / "runtime.csv").write_text("a")
    (b / "report" / "runtime.csv").write_text("b")
    (a / "report" / "lds.png").write_bytes(b"\x89PNG1")
    (b / "report" / "lds.png").write_bytes(b"\x89PNG2")
    assert soak.differing_files(a, b) == ["changed.csv", "eval/.same.csv.tmp-1234abcd", "only_a.zarr/zarr.json",
                                          "report/lds.png"]
    assert soak.differing_files(a, a) == []


def test_kill_moments_are_seeded_uniform_and_ordered():
    moments = soak.kill_moments(200, 7, 60.0)
    assert moments == soak.kill_moments(200, 7, 60.0) != soak.kill_moments(200, 8, 60.0)
    assert moments == sorted(moments) and 0 <= moments[0] and moments[-1] < 60.0
    assert 20 < np.mean(moments) < 40  # uniform over (0, 60): mean 30, std of the mean ≈ 1.2


def test_method_runtime_sums_the_last_row_of_each_of_a_methods_benchmarks(tmp_path):
    """The seconds lds.csv no longer carries: per method, its own jobs' benchmark files (a file's last
    row: its latest run), summed by hand here; a file not written yet is not counted."""
    from diffattr.plots import method_runtime

    header = "s\th:m:s\tmax_rss\tmax_vms\n"
    (tmp_path / "a.tsv").write_text(header + "9.0\t0:00:09\t100.5\t1\n2.5\t0:00:02\t120.0\t1\n")
    (tmp_path / "b.tsv").write_text(header + "4.25\t0:00:04\t-\t1\n")
    table = method_runtime({"trak": [str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv"), str(tmp_path / "absent.tsv")],
                            "random": []})
    assert table.drop(columns="max_rss_mb").to_dict("records") == [{"method": "trak", "jobs": 2, "seconds": 2.5 + 4.25},
                                                                   {"method": "random", "jobs": 0, "seconds": 0.0}]
    assert table["max_rss_mb"][0] == 120.0 and np.isnan(table["max_rss_mb"][1])


def test_a_resumed_training_writes_the_same_log_bytes(digits_store, tmp_path):
    """The training-log table is part of the resume state: killed after step 8 and resumed, the log
    is byte-identical to an uninterrupted run's, and holds no wall time."""
    from diffattr.data.store import read_images

    images = read_images(digits_store, "train")[:48]
    cfg = {"steps": 12, "batch_size": 16, "lr": 2e-3, "checkpoint_fractions": [1.0], "resume_every": 4, "log_every": 3}

    def train(out: Path) -> None:
        train_ddpm(images, TINY_UNET, SCHEDULER, cfg, 0, [str(out / "step12.safetensors")], str(out / "log.csv"),
                   str(out / "resume"))

    train(tmp_path / "straight")
    calls, original = {"n": 0, "die_at": 10}, torch.optim.AdamW.step

    def counted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:  # step 10 of 12: the last state is step 8, mid-window of row 9
            raise KeyboardInterrupt("killed mid-training")
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = counted_step
    try:
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path / "resumed")
        assert (tmp_path / "resumed" / "resume" / "state.safetensors").exists()
        calls.update(n=0, die_at=None)
        train(tmp_path / "resumed")
    finally:
        torch.optim.AdamW.step = original
    assert calls["n"] == 4  # steps 9–12 only: it did resume
    straight = pd.read_csv(tmp_path / "straight" / "log.csv")
    assert list(straight.columns) == ["step", "loss", "lr"] and list(straight["step"]) == [3, 6, 9, 12]
    assert (tmp_path / "resumed" / "log.csv").read_bytes() == (tmp_path / "straight" / "log.csv").read_bytes()


SAVE_IN_A_PROCESS = """
import sys, torch
from diffattr.models.checkpoint import save_safetensors
tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.tensor([1.5, -2.0], dtype=torch.float64),
           "Upper": torch.tensor([7], dtype=torch.uint8), "idx": torch.arange(5, dtype=torch.int64)}
metadata = {f"key{i}": f"value {i}" for i in (7, 3, 0, 5, 1, 6, 2, 4)} | {"note": "λ = 1e-2, ✓"}
save_safetensors(tensors, sys.argv[1], metadata)
"""


def test_checkpoints_saved_in_two_processes_are_the_same_bytes_and_read_back(tmp_path):
    """safetensors orders ``__metadata__`` by a per-process hash seed; the helper's canonical header
    does not: two processes write the same bytes, which safetensors reads back exactly."""
    import json
    import struct
    import subprocess
    import sys

    from safetensors import safe_open
    from safetensors.torch import load_file

    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in paths:
        subprocess.run([sys.executable, "-c", SAVE_IN_A_PROCESS, str(path)], check=True, cwd=soak.REPO)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]  # no temporaries left

    blob = paths[0].read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    assert length % 8 == 0 and blob[8 : 8 + length].rstrip(b" ").endswith(b"}")
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    tensors = load_file(str(paths[0]))
    assert torch.equal(tensors["w"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert torch.equal(tensors["b"], torch.tensor([1.5, -2.0], dtype=torch.float64))
    assert torch.equal(tensors["Upper"], torch.tensor([7], dtype=torch.uint8))
    assert torch.equal(tensors["idx"], torch.arange(5))
    with safe_open(str(paths[0]), framework="pt") as f:
        assert f.metadata() == {f"key{i}": f"value {i}" for i in range(8)} | {"note": "λ = 1e-2, ✓"}


def test_the_canonical_header_keeps_the_tensor_bytes_and_only_reorders_the_header():
    """Against safetensors' own serialisation: the same tensor bytes after the header, and the same
    header once parsed (only the order of keys and the padding may change)."""
    import json
    import struct

    from safetensors.torch import save

    from diffattr.models.checkpoint import canonical_bytes

    tensors = {"z": torch.ones(3, dtype=torch.float16), "a": torch.zeros(2, 2)}
    blob = save(tensors, metadata={"q": "1", "b": "2", "x": "3"})
    start, data = canonical_bytes(blob)
    (old,), (new,) = struct.unpack("<Q", blob[:8]), struct.unpack("<Q", start[:8])
    assert len(start) == 8 + new and new % 8 == 0
    assert bytes(data) == blob[8 + old :]
    assert json.loads(start[8:]) == json.loads(blob[8 : 8 + old])


def test_a_finished_trainings_empty_resume_folders_go_up_to_the_resume_root(tmp_path):
    from diffattr.train import remove_resume_dir

    root = tmp_path / "out" / "resume"
    mine, other = root / "lds" / "0" / "seed0", root / "lds" / "1" / "seed0"
    mine.mkdir(parents=True)
    other.mkdir(parents=True)
    remove_resume_dir(mine)  # its subset folder goes; the pool folder holds another job's progress
    assert not (root / "lds" / "0").exists() and other.is_dir()
    remove_resume_dir(other)  # the last one: every empty folder up to the root, which goes too
    assert not root.exists() and (tmp_path / "out").is_dir()
    leftover = tmp_path / "x" / "resume" / "p" / "seed0"
    leftover.mkdir(parents=True)
    (leftover / "state.safetensors").write_bytes(b"progress")
    with pytest.raises(OSError):  # a resume folder that still holds something is never removed
        remove_resume_dir(leftover)
    assert (leftover / "state.safetensors").read_bytes() == b"progress"
    outside = tmp_path / "y" / "a" / "seed0"  # under no folder named resume: only the leaf
    outside.mkdir(parents=True)
    remove_resume_dir(outside)
    assert not outside.exists() and (tmp_path / "y" / "a").is_dir()


def test_retraining_curves_hold_no_wall_time():
    from diffattr.methods.retraining import lds_vs_models

    rng = np.random.default_rng(0)
    masks, eval_masks = rng.random((12, 10)) < 0.5, rng.random((6, 10)) < 0.5
    weights = rng.standard_normal((10, 3))
    table = lds_vs_models(masks, masks @ weights, eval_masks, eval_masks @ weights, [12], "datamodels", cv=3)
    assert not [c for c in table.columns if "second" in c]
    assert table["lds"].iloc[0] > 0.5  # a linear truth: the datamodel recovers it


def test_the_ceiling_rows_count_their_queries_like_a_method():
    from diffattr.evaluate.table import ceiling_rows
    from diffattr.ground_truth import reliability_table

    losses = np.random.default_rng(1).random((1, 5, 4, 7))  # (seeds, subsets, pairs, queries)
    reliability = reliability_table({"val": losses})
    rows = ceiling_rows(reliability)
    assert rows[["n_subsets", "n_queries", "n_undefined"]].to_dict("records") == [
        {"n_subsets": 5, "n_queries": 7, "n_undefined": 0}]
    rows = ceiling_rows(reliability.assign(n_undefined=2))  # a table that counts its undefined queries
    assert rows[["n_queries", "n_undefined"]].to_dict("records") == [{"n_queries": 5, "n_undefined": 2}]


# -------------------------------------------------------------------------------- workflow tier

class Reference:
    """The tiny config's uninterrupted run, once per module: made into ``output_dir`` (which every run
    of the module uses: it is part of the config, and the results record paths) and moved to ``out``."""

    def __init__(self, output_dir: Path, out: Path, seconds: float):
        self.output_dir, self.out, self.seconds = output_dir, out, seconds


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    tmp = tmp_path_factory.mktemp("tiny")
    start = time.monotonic()
    soak.run(soak.TINY, tmp / "results", tmp / "a-wd", keep_as=tmp / "a")
    return Reference(tmp / "results", tmp / "a", time.monotonic() - start)


@pytest.fixture(scope="module")
def killed(reference: Reference, tmp_path_factory: pytest.TempPathFactory) -> soak.SoakResult:
    """The second run of the config: the kill soak's, 3 SIGKILLs of the whole process group and
    recoveries, into the reference's ``output_dir`` (left there). It is the "second run" of the
    same-bytes test too: every restart is a fresh process (new hash seeds), so a killed run that
    matches the reference is a stronger check than an uninterrupted one, and the module costs two
    runs (CI budget: tests/configs/tiny.yaml's header)."""
    # kill moments over 80 % of the reference's time: a rerun skips finished jobs, and on a shared
    # machine a run can go faster than the reference did and finish before the last kill is due
    return soak.soak(3, 0, tmp_path_factory.mktemp("soak"), reference=reference.out,
                     expected_seconds=0.8 * reference.seconds, output=reference.output_dir)


@pytest.mark.workflow
def test_the_same_config_gives_the_same_bytes(reference, killed):
    assert not killed.failures, killed.failures[0]
    second = reference.output_dir
    compared = soak.result_files(reference.out)
    assert {"lds.csv", "lds.md", "eval/lds/trak.csv", "models/full/0/seed0/step40.safetensors",
            "models/full/0/seed0/train_log.csv", "counterfactual.csv", "report/lds.png"} <= set(compared)
    differing = soak.differing_files(reference.out, second)
    assert not differing, f"{len(differing)} of {len(compared)} files differ between two runs: {', '.join(differing)}"
    # a finished run leaves no resume state and no empty resume folders
    assert not (reference.out / "resume").exists() and not (second / "resume").exists()
    # the timings went to the runtime tables, not into the results
    lds = pd.read_csv(reference.out / "lds.csv")
    assert "seconds" not in lds.columns and "seconds" not in pd.read_csv(compared["models/full/0/seed0/train_log.csv"])
    methods = pd.read_csv(reference.out / "benchmarks" / "methods.csv").set_index("method")
    assert list(methods.index) == ["pixel_l2", "random", "trak"]
    assert (methods["seconds"] > 0).all() and methods.loc["trak", "jobs"] == 3  # 2 sets' scores + λ selection
    # every row is over all of its queries or says how many it left out, the ceiling's too
    rows = lds[lds["kind"].isin(["pixel", "random", "trak", "ceiling"])]
    assert len(rows) == 8 and (rows["n_queries"] + rows["n_undefined"] == 10).all()


@pytest.mark.workflow
def test_a_run_killed_three_times_recovers_to_the_same_bytes(killed):
    assert not killed.failures, killed.failures[0]
    assert killed.summary() == "faults survived 3/3, files differing 0", ", ".join(killed.differing)


def test_the_reliability_table_counts_queries_without_a_split_half_correlation():
    from diffattr.ground_truth import reliability_table

    losses = np.random.default_rng(2).random((1, 5, 4, 7))
    losses[0, :, :, 3] = 1.0  # constant across subsets: its halves have no correlation
    table = reliability_table({"val": losses})
    halves_a, halves_b = losses[0, :, 0::2].mean(axis=1), losses[0, :, 1::2].mean(axis=1)
    from scipy.stats import spearmanr

    expected = np.mean([spearmanr(halves_a[:, q], halves_b[:, q]).statistic for q in range(7) if q != 3])
    assert table[["n_queries", "n_undefined"]].to_dict("records") == [{"n_queries": 7, "n_undefined": 1}]
    assert np.isclose(table["split_half"].item(), expected)
