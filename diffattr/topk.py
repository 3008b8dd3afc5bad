"""Top-k and bottom-k training images per query from a score store, in memory flat in N.

Issue 16 item 5–6: an attribute run asks, per query x, for the k training images z with the
largest responsibility r(x, z) = −s·τ(x, z) (:func:`diffattr.scores.responsibility`; s is the
store's LDS sign, τ its raw score) and the k with the smallest, at any N, without an
(n_queries × N) matrix in memory.

**Streaming.** The store is read by blocks of ``rows`` × ``cols`` (row block outer, column block
inner, columns in increasing order). Each row of a row block keeps a running set of k candidates;
each column block is merged into it with one ``ndarray.partition`` (introselect, the algorithm behind
``np.argpartition``) over the k + cols candidates. Memory is O(rows·(cols + k)) whatever N is.
(The store's own chunks must be at most ``cols`` wide for that: a reader cannot decode part of a
compressed chunk. :func:`diffattr.scores.write_scores` today writes chunks N wide.)

**Ties.** Equal responsibilities rank the lower training index first, at both ends (the order of
:func:`diffattr.show.rank_training`): top = sorted by (−r, index), bottom = sorted by (r, index).
That is exact, not "usually": each candidate is one unsigned 64-bit key

    key(r, j) = u(r) · 2³² + (2³² − 1 − j),

with u the order-preserving map of a float32 to uint32 (flip all bits of a negative, set the sign
bit of a non-negative; −0 is first made +0), so key order is (r, then lower j) order and the k
largest keys are the top k (for the bottom, the same with −r). The key carries the index, so the
running state is k keys per row and no index array is partitioned alongside. Scores are float32
(the score store contract), so r is exact in float32; N < 2³² training images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diffattr.atomic import atomic_path
from diffattr.integrity import SEAL, read_array
from diffattr.scores import ScoreSignError, open_score_store, responsibility

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd

END_TOP = "top"
END_BOTTOM = "bottom"
COLUMNS = ("query", "query_file", "end", "rank", "train_index", "train_file", "label", "caption",
           "score", "responsibility")
"""The top-k table's columns, in order (issue 16 item 5)."""

PARQUET_ENGINE = "pyarrow"
"""The Parquet writer: pyarrow, pandas' default engine and the one its readers expect."""

_LOW32 = np.uint64(0xFFFFFFFF)
_MAX_TRAIN = 2**32 - 1

BlockReader = Callable[[int, int, int, int], np.ndarray]
"""``read(r0, r1, c0, c1)`` → scores[r0:r1, c0:c1] as a numpy array."""


class TopKError(ValueError):
    """A bad top-k request or input, stated in one sentence."""


@dataclass(frozen=True)
class TopK:
    """The k most and k least responsible training images of each of n queries, all (n, k):
    ``top_*`` most responsible first, ``bottom_*`` least responsible first; ``*_index`` int64
    training indices, ``*_responsibility`` r = −s·τ and ``*_score`` the raw τ, both float64.
    ``n_train`` is N and ``sign`` the store's s."""

    top_index: np.ndarray
    top_responsibility: np.ndarray
    top_score: np.ndarray
    bottom_index: np.ndarray
    bottom_responsibility: np.ndarray
    bottom_score: np.ndarray
    n_train: int
    sign: int

    @property
    def k(self) -> int:
        """Entries per end."""
        return int(self.top_index.shape[1])

    @property
    def n_queries(self) -> int:
        """Number of queries (rows)."""
        return int(self.top_index.shape[0])

    @property
    def rank(self) -> np.ndarray:
        """Ranks 1..k of the columns, at either end (rank 1 = the most responsible at the top end,
        the least responsible at the bottom end)."""
        return np.arange(1, self.k + 1, dtype=np.int64)


# --- keys: (responsibility, lower index) as one sortable uint64 ------------------------------------


def ordered_bits(values: np.ndarray) -> np.ndarray:
    """u(v): float32 → uint64 in [0, 2³²) with u(a) < u(b) ⇔ a < b for finite a, b (−0 = +0):
    bits ^ mask, mask = all ones for a negative (flip every bit) and the sign bit otherwise."""
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # −0 + 0 = +0
    mask = (bits.view(np.int32) >> 31).view(np.uint32)  # arithmetic shift: 0xFFFFFFFF if negative, else 0
    mask |= np.uint32(0x80000000)
    mask ^= bits
    return mask.astype(np.uint64)


def float_from_bits(u: np.ndarray) -> np.ndarray:
    """The inverse of :func:`ordered_bits` (as float32)."""
    u32 = np.asarray(u, dtype=np.uint64).astype(np.uint32)
    bits = np.where(u32 & np.uint32(0x80000000), u32 & np.uint32(0x7FFFFFFF), ~u32)
    return bits.astype(np.uint32).view(np.float32)


def encode_keys(resp: np.ndarray, start: int) -> np.ndarray:
    """key = u(r)·2³² + (2³² − 1 − j) for the (b, w) float32 responsibilities of training indices
    j = start … start + w − 1: larger key = larger r, then lower j."""
    keys = ordered_bits(resp)
    keys <<= np.uint64(32)
    keys |= _LOW32 - np.arange(start, start + resp.shape[1], dtype=np.uint64)
    return keys


def decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training index int64, responsibility float32) of keys from :func:`encode_keys`."""
    index = (_LOW32 - (keys & _LOW32)).astype(np.int64)
    return index, float_from_bits(keys >> np.uint64(32))


def merge_largest(running: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The (at most) k largest of each row of [running | candidates] (unsorted), by one in-place
    ``partition`` per merge: O(b·(k + w)) time and memory; the result owns its (b, k) memory."""
    pool = np.concatenate([running, candidates], axis=1)
    if pool.shape[1] <= k:
        return pool
    pool.partition(pool.shape[1] - k, axis=1)
    return pool[:, -k:].copy()  # a copy, so the (b, k + w) pool is freed


def sorted_desc(keys: np.ndarray) -> np.ndarray:
    """Each row of ``keys`` sorted largest first (keys are unique, so this is a total order)."""
    return np.sort(keys, axis=1)[:, ::-1]


# --- the streaming pass ---------------------------------------------------------------------------


def _check_request(n_train: int, k: int, rows: int, cols: int, what: str) -> None:
    for name, value in (("k", k), ("rows", rows), ("cols", cols)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise TopKError(f"top-k: {name} must be a positive integer, got {value!r}.")
    if k > n_train:
        raise TopKError(f"top-k: k = {k} is more than the {n_train} training images of {what}; choose k ≤ {n_train}.")
    if n_train > _MAX_TRAIN:
        raise TopKError(f"top-k: {what} has {n_train} training images, more than the {_MAX_TRAIN} this ranking indexes.")


def stream_top_and_bottom(read: BlockReader, shape: tuple[int, int], k: int, sign: int,
                          rows: int = 256, cols: int = 8192, what: str = "the score matrix") -> TopK:
    """Top-k and bottom-k of r = −sign·τ per row of an (n × N) matrix τ that ``read(r0, r1, c0, c1)``
    serves block by block (at most ``rows`` × ``cols`` per call), merged per column block
    (:func:`merge_largest` on :func:`encode_keys`); ties rank the lower index first."""
    n, n_train = (int(s) for s in shape)
    _check_request(n_train, k, rows, cols, what)
    if sign not in (-1, 1):
        raise TopKError(f"top-k: the score sign of {what} must be -1 or +1, got {sign!r}.")
    top = np.empty((n, k), dtype=np.uint64)
    bottom = np.empty((n, k), dtype=np.uint64)
    factor = np.float32(-sign)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        run_top = np.empty((r1 - r0, 0), dtype=np.uint64)
        run_bottom = np.empty((r1 - r0, 0), dtype=np.uint64)
        for c0 in range(0, n_train, cols):
            c1 = min(c0 + cols, n_train)
            block = np.asarray(read(r0, r1, c0, c1))
            if block.shape != (r1 - r0, c1 - c0):
                raise TopKError(f"top-k: {what} returned a block of shape {block.shape} for rows {r0}..{r1 - 1}, "
                                f"columns {c0}..{c1 - 1}.")
            if block.dtype != np.float32:
                raise TopKError(f"top-k: {what} holds {block.dtype} scores, not the float32 of a score store.")
            if not np.isfinite(block).all():
                raise TopKError(f"top-k: {what} has non-finite scores in rows {r0}..{r1 - 1}, columns {c0}..{c1 - 1}.")
            resp = block * factor  # exact in float32
            run_top = merge_largest(run_top, encode_keys(resp, c0), k)
            run_bottom = merge_largest(run_bottom, encode_keys(-resp, c0), k)
        top[r0:r1] = sorted_desc(run_top)
        bottom[r0:r1] = sorted_desc(run_bottom)
    return _topk_from_keys(top, bottom, n_train, sign)


def _topk_from_keys(top: np.ndarray, bottom: np.ndarray, n_train: int, sign: int) -> TopK:
    t_index, t_resp = decode_keys(top)
    b_index, b_neg = decode_keys(bottom)
    t_resp = t_resp.astype(np.float64)
    b_resp = -b_neg.astype(np.float64) + 0.0
    return TopK(top_index=t_index, top_responsibility=t_resp, top_score=-sign * t_resp + 0.0,
                bottom_index=b_index, bottom_responsibility=b_resp, bottom_score=-sign * b_resp + 0.0,
                n_train=n_train, sign=sign)


def store_sign(path: str | os.PathLike, attrs: dict, sign: int | None) -> int:
    """The LDS sign to rank the store at ``path`` by: its ``sign`` attr, or ``sign`` when given
    (which must then agree with the attr, if any)."""
    stored = attrs.get("sign")
    if sign is None and stored is None:
        raise TopKError(f"Score store '{path}' has no 'sign' attribute, so its ranking direction is unknown; pass sign=-1 or +1.")
    if sign is not None and stored is not None and int(stored) != int(sign):
        raise TopKError(f"top-k: sign={sign} was given but score store '{path}' records sign {int(stored)}.")
    chosen = int(stored if sign is None else sign)
    try:
        responsibility(np.zeros(0), chosen)
    except ScoreSignError as err:
        raise TopKError(f"Score store '{path}': {err}") from err
    return chosen


def top_and_bottom(scores_path: str | os.PathLike, k: int, sign: int | None = None,
                   rows: int = 256, cols: int = 8192) -> TopK:
    """Top-k and bottom-k training images by responsibility r = −s·τ for every query (row) of the
    score store at ``scores_path`` (:func:`diffattr.scores.open_scores`; s from its ``sign``
    attr unless given), read in checked blocks of ``rows`` × ``cols``
    (:func:`stream_top_and_bottom`); ties rank the lower training index first."""
    root = open_score_store(scores_path)
    array = root["scores"]
    attrs = {key: value for key, value in root.attrs.items() if key != SEAL}
    chosen = store_sign(scores_path, attrs, sign)
    if array.dtype != np.float32:
        raise TopKError(f"Score store '{scores_path}' holds {array.dtype} scores, not float32.")

    def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return read_array(scores_path, array, (slice(r0, r1), slice(c0, c1)), "scores")

    return stream_top_and_bottom(read, tuple(array.shape), k, chosen, rows, cols, f"score store '{scores_path}'")


# --- the table --------------------------------------------------------------------------------------


def _check_length(name: str, values: Sequence | np.ndarray, expected: int, what: str) -> None:
    if len(values) != expected:
        raise TopKError(f"top-k table: {name} has {len(values)} entries but the scores have {expected} {what}.")


def topk_table(topk: TopK, query_files: Sequence[str], train_files: Sequence[str],
               train_labels: Sequence[int] | np.ndarray,
               train_captions: Sequence[str] | None = None) -> "pd.DataFrame":
    """One row per (query, end, rank): columns :data:`COLUMNS`, queries in order, the top end
    (most responsible first) before the bottom end (least responsible first); ``caption`` is
    missing when no captions are given. responsibility = −sign·score."""
    import pandas as pd

    n, k = topk.n_queries, topk.k
    _check_length("query_files", query_files, n, "queries")
    _check_length("train_files", train_files, topk.n_train, "training images")
    _check_length("train_labels", train_labels, topk.n_train, "training images")
    if train_captions is not None:
        _check_length("train_captions", train_captions, topk.n_train, "training images")
    train_files = np.asarray(train_files, dtype=object)
    labels = np.asarray(train_labels)
    captions = None if train_captions is None else np.asarray(train_captions, dtype=object)

    # (query, end, rank) in row-major order: index arrays of shape (n, 2, k) flattened
    index = np.stack([topk.top_index, topk.bottom_index], axis=1).reshape(-1)
    score = np.stack([topk.top_score, topk.bottom_score], axis=1).reshape(-1)
    resp = np.stack([topk.top_responsibility, topk.bottom_responsibility], axis=1).reshape(-1)
    query = np.repeat(np.arange(n, dtype=np.int64), 2 * k)
    end = np.tile(np.repeat(np.array([END_TOP, END_BOTTOM], dtype=object), k), n)
    rank = np.tile(topk.rank, 2 * n)
    return pd.DataFrame({
        "query": query,
        "query_file": np.asarray(query_files, dtype=object)[query],
        "end": end,
        "rank": rank,
        "train_index": index,
        "train_file": train_files[index],
        "label": labels[index],
        "caption": [None] * len(index) if captions is None else captions[index],
        "score": score,
        "responsibility": resp,
    }, columns=list(COLUMNS))


def _require_parquet() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise TopKError(f"Writing the top-k Parquet table needs {PARQUET_ENGINE}, which is not installed; "
                        f"`pip install {PARQUET_ENGINE}`.") from err


def write_topk_table(df: "pd.DataFrame", csv_path: str | os.PathLike, parquet_path: str | os.PathLike) -> None:
    """Write ``df`` as CSV (no index) and Parquet (:data:`PARQUET_ENGINE`), each atomically
    (:func:`diffattr.atomic.atomic_path`); both are written before either replaces an old file."""
    _require_parquet()
    if Path(csv_path) == Path(parquet_path):
        raise TopKError(f"top-k table: the CSV and Parquet paths are both '{csv_path}'.")
    with atomic_path(csv_path) as csv_tmp, atomic_path(parquet_path) as parquet_tmp:
        df.to_csv(csv_tmp, index=False)
        df.to_parquet(parquet_tmp, engine=PARQUET_ENGINE, index=False)
