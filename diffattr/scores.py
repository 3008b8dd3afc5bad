"""Score store: an (attributed × train) float32 zarr array written and read in row blocks, so no
stage needs the whole score matrix in memory (the trak library needed > 200 GB for this, §6).
Reads are checked (:mod:`diffattr.integrity`): a truncated, garbled or missing chunk is named in one
sentence with the rule that rebuilds the store, not a codec traceback.

A store's raw scores τ(x, z) carry, in its attrs, the method's LDS sign s (docs/methods.md §0,
§4.4; :mod:`diffattr.methods.registry`): the LDS predicts the loss at x of a model trained on S as
Σ_{z∈S} s·τ(x, z). So :func:`responsibility` = −s·τ is how much including z *lowers* x's loss, the
one ranking that display (:mod:`diffattr.show`) and removal (:mod:`diffattr.counterfactual`) share."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from pathlib import Path

import numpy as np
import zarr

from diffattr.atomic import atomic_path
from diffattr.integrity import (
    SEAL,
    StoreError,
    array_options,
    missing_advice,
    open_store,
    read_array,
    require_arrays,
    seal,
)


class ScoreSignError(ValueError):
    """A score sign other than −1 or +1, stated in one sentence."""


def responsibility(scores: np.ndarray, sign: int) -> np.ndarray:
    """−sign·τ: how much including each training image lowers the attributed sample's loss
    (larger = more responsible), for a store whose LDS sign is ``sign`` (±1). For s = −1
    (``HELPS``) this is τ; for s = +1 (``LOSS_UNITS``, τ = the loss change) it is −τ."""
    if sign not in (-1, 1):
        raise ScoreSignError(f"The score sign must be -1 or +1, got {sign!r}.")
    return -float(sign) * np.asarray(scores, dtype=np.float64)


SCORE_COLUMNS = 8192
"""Training columns per chunk of a score store."""


def write_scores(
    path: str | os.PathLike,
    n_queries: int,
    n_train: int,
    block: Callable[[int, int], np.ndarray],
    block_rows: int,
    attrs: dict[str, Any],
) -> None:
    """Write ``block(start, stop)`` → (stop − start, n_train) for consecutive row blocks, chunked by
    :data:`SCORE_COLUMNS` training columns too, so that a reader of a column block (the top-k tables
    of :mod:`diffattr.topk`) decodes only that block: flat memory at any N (benchmarks/README.md)."""
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(attrs)
        arr = root.create_array("scores", shape=(n_queries, n_train), dtype="float32",
                                chunks=(max(1, min(block_rows, n_queries)), max(1, min(n_train, SCORE_COLUMNS))),
                                **array_options())
        seal(root)
        for start in range(0, n_queries, block_rows):
            stop = min(start + block_rows, n_queries)
            values = np.asarray(block(start, stop), dtype=np.float32)
            if values.shape != (stop - start, n_train):
                raise ValueError(f"scorer returned a block of shape {values.shape}, expected {(stop - start, n_train)}")
            if not np.isfinite(values).all():
                raise ValueError(f"scorer returned non-finite scores in rows {start}..{stop - 1}")
            arr[start:stop] = values


def open_score_store(path: str | os.PathLike) -> zarr.Group:
    """The score store at ``path``, after checking that it exists, holds a ``scores`` array and
    misses no chunk (:func:`diffattr.integrity.open_store`); otherwise :class:`StoreError`."""
    if not Path(path).exists():
        raise StoreError(f"Score store '{path}' does not exist; {missing_advice(path)}.")
    root = open_store(path)
    require_arrays(path, root, ("scores",))
    return root


def open_scores(path: str | os.PathLike) -> zarr.Array:
    """The checked ``scores`` array of the store at ``path`` (:func:`open_score_store`)."""
    return open_score_store(path)["scores"]


def score_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(attributed, train) shape of a checked score store."""
    return tuple(open_scores(path).shape)


def score_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The score store's attrs (method, sign, ...), without the integrity seal."""
    return {k: v for k, v in open_score_store(path).attrs.items() if k != SEAL}


def read_score_rows(path: str | os.PathLike, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the score store at ``path``; a damaged chunk raises :class:`StoreError`."""
    return read_array(path, open_scores(path), slice(start, stop), "scores")


def iter_score_blocks(path: str | os.PathLike, block_rows: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
    """(start row, rows [start, start + block_rows)) of the score store, block by block (checked reads)."""
    arr = open_scores(path)
    for start in range(0, arr.shape[0], block_rows):
        yield start, read_array(path, arr, slice(start, start + block_rows), "scores")
