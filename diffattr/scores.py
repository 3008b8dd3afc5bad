"""Score store: an (attributed × train) float32 zarr array written and read in row blocks, so no
stage needs the whole score matrix in memory (the trak library needed > 200 GB for this, §6)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import zarr

from diffattr.atomic import atomic_path


def write_scores(
    path: str | os.PathLike,
    n_queries: int,
    n_train: int,
    block: Callable[[int, int], np.ndarray],
    block_rows: int,
    attrs: dict[str, Any],
) -> None:
    """Write ``block(start, stop)`` → (stop − start, n_train) for consecutive row blocks."""
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(attrs)
        arr = root.create_array("scores", shape=(n_queries, n_train), dtype="float32",
                                chunks=(max(1, min(block_rows, n_queries)), n_train))
        for start in range(0, n_queries, block_rows):
            stop = min(start + block_rows, n_queries)
            values = np.asarray(block(start, stop), dtype=np.float32)
            if values.shape != (stop - start, n_train):
                raise ValueError(f"scorer returned a block of shape {values.shape}, expected {(stop - start, n_train)}")
            if not np.isfinite(values).all():
                raise ValueError(f"scorer returned non-finite scores in rows {start}..{stop - 1}")
            arr[start:stop] = values


def score_shape(path: str | os.PathLike) -> tuple[int, int]:
    return tuple(zarr.open_group(str(path), mode="r")["scores"].shape)


def score_attrs(path: str | os.PathLike) -> dict[str, Any]:
    return dict(zarr.open_group(str(path), mode="r").attrs)


def iter_score_blocks(path: str | os.PathLike, block_rows: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
    arr = zarr.open_group(str(path), mode="r")["scores"]
    for start in range(0, arr.shape[0], block_rows):
        yield start, np.asarray(arr[start : start + block_rows])
