"""benchmarks/gpu_check.sh (issue 17, item 4) must not rot: its CPU run at toy sizes writes the table
and the JSON, every twin row is within its stated tolerance, bad input is one sentence, and the
pieces it measures with agree with independent computations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import ndtri

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

SCRIPT = str(REPO / "benchmarks" / "gpu_check.sh")
HEADER = "| part | check | measured | limit | ok | why |"


def run_script(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The shell entry point with this test run's interpreter."""
    return subprocess.run([SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def table_rows(markdown: str) -> list[list[str]]:
    """The Markdown table's body rows, split into cells (escaped pipes kept inside their cell)."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and line != HEADER]
    return [[c.strip() for c in line.strip("|").replace("\\|", "\0").split("|")] for line in lines]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`gpu_check.sh --device cpu --tiny` once (twins and throughput; the workflow part is skipped)."""
    out = tmp_path_factory.mktemp("gpu_check")
    result = run_script("--device", "cpu", "--tiny", "--out", str(out), "--threads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


# ---------------------------------------------------------------- the tiny CPU run


def test_tiny_run_writes_one_table_with_the_stated_columns(tiny):
    _, doc, markdown = tiny
    assert HEADER in markdown.splitlines()
    body = table_rows(markdown)
    assert len(body) == len(doc["rows"]) and all(len(cells) == 6 for cells in body)
    assert [cells[1] for cells in body] == [r["check"] for r in doc["rows"]]
    assert {r["part"] for r in doc["rows"]} == {"twins", "throughput", "end to end"}
    assert doc["environment"]["device"] == "cpu" and doc["tiny"] is True


def test_every_twin_row_is_within_its_stated_tolerance(tiny):
    _, doc, markdown = tiny
    twins = [r for r in doc["rows"] if r["part"] == "twins"]
    assert len(twins) == 10
    for r in twins:
        assert r["limit"] is not None and r["why"], r  # each tolerance is stated with its reason
        assert r["op"] == "<=" and r["measured"] <= r["limit"] and r["ok"] is True, r
    # the Markdown says the same as the JSON
    marked = {cells[1]: cells[4] for cells in table_rows(markdown)}
    assert all(marked[r["check"]] == "yes" for r in twins)


def test_the_integer_twin_compares_every_integer_it_names(tiny):
    """2 seeds × 3 row ranges × rows × k hash words, counted from the sizes, not from the script's row."""
    _, doc, _ = tiny
    sizes = gpu_check.TINY
    row = next(r for r in doc["rows"] if r["check"].startswith("projection hash integers"))
    assert row["measured"] == 0
    assert f"{2 * 3 * sizes.twin_rows * sizes.twin_dim} integers" in row["why"]


def test_the_bf16_reference_rows_measure_a_real_difference(tiny):
    """bf16 vs fp32 on one device is not 0 (the comparison is live) and is about bf16's rounding, 2⁻⁹."""
    _, doc, _ = tiny
    ref = {r["check"]: r["measured"] for r in doc["rows"] if r["check"].startswith("(reference)")}
    assert len(ref) == 2
    assert all(2**-12 < value < 2**-5 for value in ref.values()), ref


def test_throughput_rows_report_rates_or_why_not(tiny):
    _, doc, _ = tiny
    rows = {r["check"]: r for r in doc["rows"] if r["part"] == "throughput"}
    assert rows["diffattr featurize, bf16 projection"]["measured"] > 0
    assert rows["peak RSS"]["measured"] > 100  # MB: torch alone is more
    share = rows["projection share of featurization time"]["measured"]
    assert 0 < share < 1
    assert rows["plain forward+backward / featurize time (roofline ratio)"]["measured"] > 0
    traker = rows["traker featurize"]
    assert traker["measured"] is not None or traker["why"] in ("traker not installed",) or traker["why"].startswith(
        "traker failed")


def test_tiny_run_says_why_the_workflow_part_did_not_run(tiny):
    _, doc, _ = tiny
    (e2e,) = [r for r in doc["rows"] if r["part"] == "end to end"]
    assert e2e["measured"] is None and "--e2e" in e2e["why"] and doc["lds"] == []


# ---------------------------------------------------------------- bad input: one sentence, nothing written


@pytest.mark.parametrize("args, words", [
    (["--device", "cuda"], "no CUDA GPU"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--device", "cpu", "--skip", "kernels"], "--skip takes"),
])
def test_bad_input_is_one_sentence_and_a_nonzero_exit(tmp_path, args, words):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the no-GPU case runs on a GPU machine too
    result = run_script(*args, "--out", str(tmp_path / "out"), env={"CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    result = run_script("--device", "cpu", "--tiny", "--out", str(target), timeout=120)
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr and target.read_text() == "x"


# ---------------------------------------------------------------- the pieces, against independent computations


def lowbias32(x: int) -> int:
    """The hash of diffattr/projection.py's docstring, in plain Python integers."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def reference_word(seed: int, i: int, j: int) -> int:
    """h(key_i ⊕ col_j) with key_i = h(h(seed ⊕ C₁) + i), col_j = h(j ⊕ C₂) (diffattr/projection.py)."""
    key = lowbias32(lowbias32(seed ^ 0x9E3779B9) + i)
    return lowbias32(key ^ lowbias32(j ^ 0x85EBCA6B))


def test_hash_words_recover_the_gaussian_entries_integers():
    """The integer twin's claim: a 32·k-column Rademacher block decodes to the integers behind a
    k-column Gaussian block — checked against a plain-Python hash and float64 Φ⁻¹."""
    from diffattr.projection import block_numpy

    seed, start, stop, k = 7, 1000, 1012, 5
    words = gpu_check.hash_words(block_numpy("rademacher", seed, start, stop, 32 * k).numpy())
    expected = np.array([[reference_word(seed, i, j) for j in range(k)] for i in range(start, stop)], dtype=np.uint32)
    assert np.array_equal(words, expected)
    u = (2 * (expected.astype(np.float64) // 2**9) + 1) / 2**24
    assert np.allclose(block_numpy("gaussian", seed, start, stop, k).numpy(), ndtri(u), atol=1e-5, rtol=0)


def test_hash_words_sees_a_single_flipped_bit():
    signs = np.ones((2, 64), dtype=np.float32)
    flipped = signs.copy()
    flipped[1, 32 + 5] = -1
    a, b = gpu_check.hash_words(signs), gpu_check.hash_words(flipped)
    assert a.tolist() == [[0xFFFFFFFF] * 2] * 2 and b[1, 1] == 0xFFFFFFFF ^ (1 << 5) and (a != b).sum() == 1


def test_relative_errors_match_a_hand_computation():
    reference = np.array([[3.0, 4.0], [1.0, 0.0]])
    ours = np.array([[3.0, 5.0], [1.0, 0.1]])
    assert gpu_check.relative_row_error(ours, reference) == pytest.approx(0.2)  # rows: 1/5, 0.1/1
    assert gpu_check.relative_error(ours, reference) == pytest.approx(np.sqrt(1.01) / np.sqrt(26))


def test_rows_compare_in_the_stated_direction_and_fail_the_check():
    assert gpu_check.row("twins", "a", 1e-3, 1e-2, "<=")["ok"] is True
    assert gpu_check.row("twins", "a", 2e-2, 1e-2, "<=")["ok"] is False
    assert gpu_check.row("throughput", "r", 0.4, 0.5, ">=")["ok"] is False
    assert gpu_check.row("throughput", "r", 3.0)["ok"] is None
    rows = [gpu_check.row("twins", "a", 0, 0, "<="), gpu_check.row("throughput", "r", 0.1, 0.5, ">=")]
    assert gpu_check.twins_ok(rows)  # a missed target is reported, not a failure
    assert not gpu_check.twins_ok(rows + [gpu_check.row("twins", "b", 1.0, 0.5, "<=")])


def test_projection_ranges_cover_both_ends_and_the_int32_wrap():
    ranges = gpu_check.projection_ranges(10_000, 100)
    assert ranges[0] == (0, 100) and ranges[1] == (9_900, 10_000)
    assert ranges[2][0] < 2**31 < ranges[2][1]


def test_the_e2e_overlay_reads_a_shipped_data_source_and_asks_for_a_gpu(tmp_path):
    from diffattr.data import load_source

    data = gpu_check.write_random_images(tmp_path / "images", 3)
    overlay = gpu_check.e2e_overlay(data, tmp_path / "results", gpu_check.TINY)
    d = overlay["data"]
    pools = load_source(d["source"], d["path"], d["resolution"], d["color"])
    images = pools["all"]
    assert images.images.shape == (6, 32, 32, 3) and sorted(set(images.labels.tolist())) == [0, 1]
    assert overlay["resources"]["gpus"] == 1 and overlay["model"]["unet"]["in_channels"] == 3


# ---------------------------------------------------------------- the workflow part


@pytest.mark.workflow
def test_tiny_end_to_end_run_records_its_wall_time_and_lds_rows(tmp_path):
    out = tmp_path / "out"
    result = run_script("--device", "cpu", "--tiny", "--e2e", "--skip", "twins", "throughput", "--cores", "2",
                        "--out", str(out), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    rows = doc["rows"]
    assert rows[0]["check"] == "workflow wall time, up to lds.csv" and rows[0]["measured"] > 0, rows[0]
    methods = {r["method"] for r in doc["lds"]}
    assert {"trak", "pixel_l2"} <= methods
    lds_rows = [r for r in rows[1:] if r["check"].startswith("LDS row")]
    assert len(lds_rows) == len(doc["lds"])
    for r, source in zip(lds_rows, doc["lds"]):
        assert source["method"] in r["check"] and (r["measured"] is None or -1 <= r["measured"] <= 1)
        assert r["measured"] == source["lds"]
