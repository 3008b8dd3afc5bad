"""Top-k tables (issue 16 item 5): the streamed top/bottom-k equals a brute-force sort of the whole
matrix with the same tie rule, the reader stays within its blocks, and the table files are atomic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import unavailable
from diffattr import topk as topk_module
from diffattr.scores import write_scores
from diffattr.topk import (
    COLUMNS,
    TopKError,
    float_from_bits,
    ordered_bits,
    stream_top_and_bottom,
    top_and_bottom,
    topk_table,
    write_topk_table,
)

# ---- the independent reference: argsort of the whole matrix ---------------------------------------


def brute_force(tau: np.ndarray, sign: int, k: int) -> dict[str, np.ndarray]:
    """Top/bottom k per row of r = −sign·τ (float64) by a full lexicographic sort: top by (−r, j),
    bottom by (r, j), j the training index."""
    r = -float(sign) * tau.astype(np.float64)
    j = np.broadcast_to(np.arange(tau.shape[1]), tau.shape)
    top = np.lexsort((j, -r), axis=1)[:, :k]
    bottom = np.lexsort((j, r), axis=1)[:, :k]
    take = lambda a, idx: np.take_along_axis(a, idx, axis=1)  # noqa: E731
    return {"top_index": top, "top_responsibility": take(r, top), "top_score": take(tau.astype(np.float64), top),
            "bottom_index": bottom, "bottom_responsibility": take(r, bottom),
            "bottom_score": take(tau.astype(np.float64), bottom)}


def matrix(kind: str, n: int, n_train: int, seed: int) -> np.ndarray:
    """float32 scores: ``ties`` draws from 7 integers (many exact ties, ±0 included), ``normal``
    continuous values with a few forced repeats."""
    rng = np.random.default_rng(seed)
    if kind == "ties":
        tau = rng.integers(-3, 4, size=(n, n_train)).astype(np.float32)
        tau[rng.random(tau.shape) < 0.2] = np.float32(-0.0)
        return tau
    tau = rng.standard_normal((n, n_train)).astype(np.float32)
    tau[:, rng.integers(0, n_train, size=3)] = tau[:, :1]  # repeats of the first column in every row
    return tau


def reader(tau: np.ndarray):
    return lambda r0, r1, c0, c1: tau[r0:r1, c0:c1]


def assert_matches(result, expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        got = getattr(result, name)
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert result.top_index.dtype == np.int64 and result.top_responsibility.dtype == np.float64


# ---- the streamed selection ------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [-1, 1])
@pytest.mark.parametrize("kind", ["ties", "normal"])
@pytest.mark.parametrize("n, n_train, k, rows, cols", [
    (5, 103, 7, 2, 10),      # N not a multiple of cols, rows not dividing n
    (4, 50, 50, 3, 16),      # k = N
    (3, 30, 1, 5, 7),        # k = 1, rows > n
    (6, 41, 12, 6, 5),       # k > cols: the running set is wider than a block
    (2, 20, 4, 1, 64),       # cols > N: one block
])
def test_stream_equals_brute_force(sign, kind, n, n_train, k, rows, cols):
    tau = matrix(kind, n, n_train, seed=n * 1000 + n_train + k)
    result = stream_top_and_bottom(reader(tau), tau.shape, k, sign, rows=rows, cols=cols)
    assert_matches(result, brute_force(tau, sign, k))
    np.testing.assert_array_equal(result.rank, np.arange(1, k + 1))
    assert result.sign == sign and result.n_train == n_train


def test_ties_rank_the_lower_index_first():
    tau = np.array([[2, 5, 5, 1, 5, 1]], dtype=np.float32)
    result = stream_top_and_bottom(reader(tau), tau.shape, 3, sign=-1, rows=1, cols=2)
    assert result.top_index.tolist() == [[1, 2, 4]]
    assert result.bottom_index.tolist() == [[3, 5, 0]]
    flipped = stream_top_and_bottom(reader(tau), tau.shape, 3, sign=1, rows=1, cols=2)
    assert flipped.top_index.tolist() == [[3, 5, 0]]  # sign +1: the most negative score is the most responsible
    np.testing.assert_array_equal(flipped.top_responsibility, [[-1.0, -1.0, -2.0]])
    np.testing.assert_array_equal(flipped.top_score, [[1.0, 1.0, 2.0]])


def test_order_preserving_bits_sort_like_the_floats():
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500),
                        [0.0, -0.0, np.inf, -np.inf, np.finfo(np.float32).tiny, -np.finfo(np.float32).tiny]]).astype(np.float32)
    u = ordered_bits(v)
    i, j = rng.integers(0, len(v), (2, 5000))
    np.testing.assert_array_equal(u[i] < u[j], v[i] < v[j])
    np.testing.assert_array_equal(u[i] == u[j], v[i] == v[j])
    np.testing.assert_array_equal(float_from_bits(u), v + np.float32(0.0))
    zero, negative_zero = ordered_bits(np.array([0.0, -0.0], dtype=np.float32))
    assert zero == negative_zero  # −0 ties with +0, as in the float comparison


@pytest.mark.parametrize("k, fragment", [(11, "k = 11 is more than the 10 training images"),
                                         (0, "k must be a positive integer")])
def test_bad_k_is_one_sentence(k, fragment):
    tau = np.zeros((2, 10), dtype=np.float32)
    calls = []
    with pytest.raises(TopKError) as err:
        stream_top_and_bottom(lambda *a: calls.append(a) or tau, tau.shape, k, -1)
    assert fragment in str(err.value) and str(err.value).count(". ") == 0 and str(err.value).endswith(".")
    assert calls == []  # refused before any read


def test_non_finite_scores_are_named():
    tau = np.zeros((3, 10), dtype=np.float32)
    tau[2, 7] = np.nan
    with pytest.raises(TopKError, match=r"non-finite scores in rows 2\.\.2, columns 5\.\.9"):
        stream_top_and_bottom(reader(tau), tau.shape, 2, -1, rows=1, cols=5)


# ---- memory flatness, structurally ----------------------------------------------------------------


def test_reader_stays_within_its_blocks(monkeypatch, tmp_path):
    n, n_train, k, rows, cols = 7, 250, 9, 3, 32
    tau = matrix("normal", n, n_train, seed=5)
    path = tmp_path / "scores.zarr"
    write_scores(path, n, n_train, lambda a, b: tau[a:b], block_rows=4, attrs={"sign": -1})

    reads, pools = [], []
    real_read, real_merge = topk_module.read_array, topk_module.merge_largest

    def recording_read(store, array, selection, name):
        reads.append(selection)
        return real_read(store, array, selection, name)

    def recording_merge(running, candidates, k_):
        pools.append((running.shape, candidates.shape))
        return real_merge(running, candidates, k_)

    monkeypatch.setattr(topk_module, "read_array", recording_read)
    monkeypatch.setattr(topk_module, "merge_largest", recording_merge)
    result = top_and_bottom(path, k, rows=rows, cols=cols)

    covered = np.zeros((n, n_train), dtype=np.int64)
    for r, c in reads:
        assert r.stop - r.start <= rows and c.stop - c.start <= cols
        covered[r, c] += 1
    assert (covered == 1).all()  # every score read exactly once
    assert len(reads) == -(-n // rows) * -(-n_train // cols)
    for running, candidates in pools:  # state per merge: ≤ rows × (k + cols)
        assert running[0] <= rows and running[1] <= k and candidates[1] <= cols
    assert_matches(result, brute_force(tau, -1, k))


# ---- stores on disk --------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [-1, 1])
def test_store_written_by_write_scores(tmp_path, sign):
    n, n_train, k = 9, 131, 6
    tau = matrix("ties", n, n_train, seed=11)
    path = tmp_path / "scores.zarr"
    write_scores(path, n, n_train, lambda a, b: tau[a:b], block_rows=4, attrs={"method": "x", "sign": sign})
    result = top_and_bottom(path, k, rows=4, cols=40)
    assert_matches(result, brute_force(tau, sign, k))
    assert result.sign == sign


def test_store_sign_is_checked(tmp_path):
    tau = matrix("normal", 2, 12, seed=1)
    signed, unsigned = tmp_path / "signed.zarr", tmp_path / "unsigned.zarr"
    write_scores(signed, 2, 12, lambda a, b: tau[a:b], 2, {"sign": 1})
    write_scores(unsigned, 2, 12, lambda a, b: tau[a:b], 2, {"method": "x"})
    with pytest.raises(TopKError, match="sign=-1 was given but score store .* records sign 1"):
        top_and_bottom(signed, 3, sign=-1)
    with pytest.raises(TopKError, match="has no 'sign' attribute"):
        top_and_bottom(unsigned, 3)
    assert_matches(top_and_bottom(unsigned, 3, sign=-1), brute_force(tau, -1, 3))
    with pytest.raises(TopKError, match="k = 13 is more than the 12 training images of score store"):
        top_and_bottom(signed, 13)


# ---- the table -------------------------------------------------------------------------------------


def small_run(sign=-1, n=3, n_train=17, k=4, seed=2):
    tau = matrix("ties", n, n_train, seed=seed)
    result = stream_top_and_bottom(reader(tau), tau.shape, k, sign, rows=2, cols=5)
    files = [f"train/{j:03d}.png" for j in range(n_train)]
    labels = np.arange(n_train) % 3
    queries = [f"q{i}.png" for i in range(n)]
    return tau, result, files, labels, queries


@pytest.mark.parametrize("sign", [-1, 1])
def test_table_rows_follow_the_brute_force_ranking(sign):
    tau, result, files, labels, queries = small_run(sign)
    captions = [f"caption {j}" for j in range(len(files))]
    df = topk_table(result, queries, files, labels, captions)
    assert tuple(df.columns) == COLUMNS
    expected = brute_force(tau, sign, result.k)
    assert len(df) == 2 * result.n_queries * result.k
    for (query, end), group in df.groupby(["query", "end"], sort=False):
        idx = expected[f"{end}_index"][query]
        assert group["rank"].tolist() == list(range(1, result.k + 1))
        assert group["train_index"].tolist() == idx.tolist()
        assert group["train_file"].tolist() == [files[j] for j in idx]
        assert group["label"].tolist() == [labels[j] for j in idx]
        assert group["caption"].tolist() == [captions[j] for j in idx]
        assert (group["query_file"] == queries[query]).all()
        np.testing.assert_array_equal(group["score"], tau[query, idx].astype(np.float64))
        np.testing.assert_array_equal(group["responsibility"], -sign * tau[query, idx].astype(np.float64))
    assert df["end"].tolist()[: 2 * result.k] == ["top"] * result.k + ["bottom"] * result.k


def test_table_without_captions_and_length_checks():
    _, result, files, labels, queries = small_run()
    df = topk_table(result, queries, files, labels)
    assert df["caption"].isna().all()
    with pytest.raises(TopKError, match="train_labels has 16 entries but the scores have 17 training images"):
        topk_table(result, queries, files, labels[:-1])
    with pytest.raises(TopKError, match="query_files has 2 entries but the scores have 3 queries"):
        topk_table(result, queries[:2], files, labels)


def test_write_topk_table_round_trips_and_is_atomic(tmp_path, monkeypatch):
    try:
        import pyarrow  # noqa: F401  (the Parquet engine, a dependency of issue 16)
    except ImportError:
        unavailable("pyarrow is not installed")  # a failure under CI=true
    _, result, files, labels, queries = small_run()
    df = topk_table(result, queries, files, labels, [f"c{j}" for j in range(len(files))])
    csv, parquet = tmp_path / "out" / "topk.csv", tmp_path / "out" / "topk.parquet"
    write_topk_table(df, csv, parquet)
    for back in (pd.read_csv(csv), pd.read_parquet(parquet)):
        assert tuple(back.columns) == COLUMNS
        assert back["train_index"].tolist() == df["train_index"].tolist()
        assert back["end"].tolist() == df["end"].tolist() and back["caption"].tolist() == df["caption"].tolist()
        np.testing.assert_array_equal(back["score"].to_numpy(), df["score"].to_numpy())
    old = csv.read_bytes(), parquet.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        write_topk_table(df.iloc[:2], csv, parquet)
    assert (csv.read_bytes(), parquet.read_bytes()) == old  # neither finished file was replaced
    assert sorted(p.name for p in csv.parent.iterdir()) == ["topk.csv", "topk.parquet"]  # no temporaries left
