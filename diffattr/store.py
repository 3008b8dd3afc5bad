"""Sharded feature store: one zarr store per featurize job, then a validated consolidated store.

A shard covers rows [start, stop) of one split; each job writes only its own shard store (so no two
jobs ever touch one zarr chunk or shard object — zarr v3 shards are single objects, and concurrent
writers to one lose rows), under a temporary name renamed when complete. Its completion marker
``complete.json`` is written last, inside the store, and records the feature spec's hash, the row
range, the shape and a SHA-256 of the feature bytes. ``gather_features`` checks every shard against
its expected marker — missing, truncated, corrupted or written for another spec are each named in
one sentence that says how to rebuild it — and copies them into one store chunked by shard
(≈ memory bandwidth). The consolidated store is checked where it is read (:mod:`diffattr.integrity`:
checksummed chunks, every chunk present), without re-hashing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from diffattr.atomic import atomic_path
from diffattr.integrity import (
    StoreError,
    array_options,
    missing_advice,
    open_store,
    read_array,
    rebuild_advice,
    require_arrays,
    seal,
)

MARKER = "complete.json"
SHARD_SIZE = 2048
"""Rows per featurize job when a feature spec sets no ``shard_size`` (FeatureSpec's default too)."""


class ShardError(StoreError):
    """A feature shard is missing, incomplete, corrupted or stale."""


def spec_hash(spec: dict[str, Any]) -> str:
    """Identity of a feature spec's content (layout knobs — shard and batch size — excluded)."""
    content = {k: v for k, v in spec.items() if k not in ("shard_size", "batch_size")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def shard_ranges(n: int, shard_size: int = SHARD_SIZE) -> list[tuple[int, int]]:
    """Row ranges of the shards of a split of ``n`` rows."""
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)] or [(0, 0)]


def kernel_form(n_train: int, k: int | None) -> str:
    """Which Gram the kernel uses (docs/methods.md §7.4): ``primal`` (k × k, summed from per-shard
    partials) when k ≤ N, else ``dual`` (N × N, Woodbury). Torch-free: the DAG decides with it."""
    return "primal" if k is not None and k <= n_train else "dual"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the arrays' float32 bytes, ``features`` first, then the rest by name."""
    h = hashlib.sha256()
    for name in ["features", *sorted(n for n in arrays if n != "features")]:
        h.update(np.ascontiguousarray(arrays[name], dtype=np.float32).tobytes())
    return h.hexdigest()


def write_shard(path: str | os.PathLike, features: np.ndarray, start: int, stop: int, spec_id: str,
                attrs: dict[str, Any] | None = None, extras: dict[str, np.ndarray] | None = None) -> None:
    """Write one shard store; the completion marker goes in last, then the store is renamed.
    ``extras``: further per-row arrays (leading dimension = rows), e.g. Journey-TRAK's per-step
    features; they are checked and gathered with the features."""
    arrays = {"features": features, **(extras or {})}
    for name, array in arrays.items():
        if array.shape[0] != stop - start:
            raise ShardError(f"feature shard {path} got {array.shape[0]} rows of {name} for range [{start}, {stop})")
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(attrs or {})
        for name, array in arrays.items():
            root.create_array(name, data=np.asarray(array, dtype=np.float32), chunks=(max(1, array.shape[0]), *array.shape[1:]),
                              **array_options())
        seal(root)
        marker = {"spec_hash": spec_id, "row_start": start, "row_stop": stop, "shape": list(features.shape),
                  "sha256": _digest(arrays)} | ({"extras": sorted(extras)} if extras else {})
        (tmp / MARKER).write_text(json.dumps(marker))


def read_shard_arrays(path: str | os.PathLike, spec_id: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """A shard's arrays (``features`` and any extras) after checking it is present, complete,
    uncorrupted and of this spec."""
    path = Path(path)
    advice = rebuild_advice(path)
    if not path.exists():
        raise ShardError(f"feature shard {path} is missing; {advice}.")
    if not (path / MARKER).exists():
        raise ShardError(f"feature shard {path} has no completion marker (its job did not finish); {advice}.")
    try:
        marker = json.loads((path / MARKER).read_text())
        expected = (marker["spec_hash"], marker["row_start"], marker["row_stop"], marker["shape"], marker["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise ShardError(f"feature shard {path} is truncated or corrupted (unreadable {MARKER}); {advice}.") from err
    if expected[0] != spec_id:
        raise ShardError(f"feature shard {path} was written for another feature spec ({marker['spec_hash']}, expected {spec_id}); {advice}.")
    if (marker["row_start"], marker["row_stop"]) != (start, stop):
        raise ShardError(f"feature shard {path} covers rows [{marker['row_start']}, {marker['row_stop']}), expected [{start}, {stop}); {advice}.")
    try:
        root = zarr.open_group(str(path), mode="r")
        arrays = {name: np.asarray(root[name][:]) for name in ["features", *marker.get("extras", [])]}
    except Exception as err:  # zarr/codec errors on truncated or missing chunks
        raise ShardError(f"feature shard {path} is truncated or corrupted ({type(err).__name__}); {advice}.") from err
    if list(arrays["features"].shape) != marker["shape"] or _digest(arrays) != marker["sha256"]:
        raise ShardError(f"feature shard {path} is truncated or corrupted (content differs from its marker); {advice}.")
    return arrays


def read_shard(path: str | os.PathLike, spec_id: str, start: int, stop: int) -> np.ndarray:
    """A validated shard's features (:func:`read_shard_arrays`)."""
    return read_shard_arrays(path, spec_id, start, stop)["features"]


def gather_features(shards: Sequence[str], ranges: Sequence[tuple[int, int]], spec_id: str,
                    out_path: str | os.PathLike, attrs: dict[str, Any] | None = None) -> tuple[int, int]:
    """Validate every shard and consolidate them (features and extras) into ``out_path`` (chunked by shard)."""
    first = read_shard_arrays(shards[0], spec_id, *ranges[0])
    n, k = ranges[-1][1], first["features"].shape[1]
    with atomic_path(out_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({**(attrs or {}), "spec_hash": spec_id, "shards": [list(r) for r in ranges]})
        chunk = max(1, ranges[0][1] - ranges[0][0])
        out = {name: root.create_array(name, shape=(n, *a.shape[1:]), dtype="float32", chunks=(chunk, *a.shape[1:]),
                                       **array_options())
               for name, a in first.items()}
        seal(root)
        for path, (start, stop) in zip(shards, ranges):
            block = first if start == ranges[0][0] else read_shard_arrays(path, spec_id, start, stop)
            for name, array in out.items():
                if name not in block or block[name].shape[1:] != array.shape[1:]:
                    raise ShardError(f"feature shard {path} has {name} of another shape than its first shard's")
                array[start:stop] = block[name]
    return n, k


class FeatureStore:
    """Read access to a consolidated feature store, by row blocks; a damaged store (missing or
    undecodable chunk, see :mod:`diffattr.integrity`) raises :class:`StoreError` in one sentence."""

    def __init__(self, path: str | os.PathLike) -> None:
        if not Path(path).exists():
            raise ShardError(f"feature store {path} does not exist; {missing_advice(path)}.")
        self.path = str(path)
        self.group = open_store(self.path)
        require_arrays(self.path, self.group, ("features",))
        self.array = self.group["features"]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape)

    def blocks(self, rows: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        """(start row, fp64 features of rows [start, start + rows)) for consecutive row blocks."""
        for start in range(0, self.shape[0], rows):
            yield start, self.read(start, start + rows)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """fp64 features of rows [start, stop)."""
        return read_array(self.path, self.array, slice(start, stop), "features").astype(np.float64, copy=False)

    def read_steps(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Journey-TRAK's per-step features of rows [start, stop), (rows, S, k), from the ``steps`` array."""
        require_arrays(self.path, self.group, ("steps",))
        return read_array(self.path, self.group["steps"], slice(start, stop), "steps").astype(np.float64, copy=False)
