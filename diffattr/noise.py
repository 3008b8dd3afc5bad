"""Noise and timesteps as pure functions of (seed, split, sample id, t).

docs/methods.md §7.2: every ε and every t is a function of recorded integers, never of hidden RNG state,
batch size, batch position or shard layout. Train and query features, ground-truth measurements and
training draws are therefore reproducible bit for bit and independent of how the work is cut up.
We draw from numpy's SeedSequence-seeded PCG64, which is platform independent; tensors are moved to
the compute device afterwards, so the CPU and CUDA paths see the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_CODES = {"train": 0, "val": 1, "gen": 2, "query": 1}
"""Integer stream per attributed/training split so that equal row numbers never share noise. An
attribute run's ``query`` images draw as ``val`` does (the two never meet in one run): a val image
exported and explained as a query gets the same (t, ε) and so the benchmark's features."""

_STREAM_NOISE = 1
_STREAM_TIMESTEPS = 2


def split_code(split: str) -> int:
    """Integer code of a split name (``train``, ``val``, ``gen``; other names hash stably)."""
    if split in SPLIT_CODES:
        return SPLIT_CODES[split]
    return 1000 + int.from_bytes(split.encode()[:7].ljust(7, b"\0"), "little")


def gaussian_noise(
    seed: int, split: str, sample_ids: Sequence[int], timesteps: np.ndarray, shape: Sequence[int]
) -> np.ndarray:
    """ε[i, j] ~ N(0, I) of ``shape`` for sample ``sample_ids[i]`` at timestep ``timesteps[i, j]``.

    ``timesteps`` is (n, K) (or (K,), shared by all samples). Returns float32 (n, K, *shape).
    Each draw is seeded by (seed, stream, split, sample id, t), so it does not depend on which other
    samples or timesteps are drawn with it.
    """
    ids = np.asarray(sample_ids, dtype=np.int64)
    ts = np.broadcast_to(np.asarray(timesteps, dtype=np.int64), (len(ids), np.shape(timesteps)[-1]))
    code = split_code(split)
    out = np.empty((len(ids), ts.shape[1], *shape), dtype=np.float32)
    for i, sample in enumerate(ids):
        for j, t in enumerate(ts[i]):
            rng = np.random.default_rng([seed, _STREAM_NOISE, code, int(sample), int(t)])
            out[i, j] = rng.standard_normal(tuple(shape), dtype=np.float32)
    return out


def timestep_set(strategy: str, count: int, num_train_timesteps: int) -> np.ndarray:
    """The shared timestep set T_K of docs/methods.md §0.

    ``uniform``: range(0, T, T // K) (D-TRAK's 0-indexed "evenly spaced"); ``cumulative``: 0..K-1.
    """
    if strategy == "uniform":
        step = num_train_timesteps // count
        if step < 1:
            raise ValueError(f"cannot take {count} uniform timesteps out of {num_train_timesteps}")
        return np.arange(0, step * count, step, dtype=np.int64)
    if strategy == "cumulative":
        return np.arange(count, dtype=np.int64)
    raise ValueError(f"timestep strategy {strategy!r} has no shared set; use sample_timesteps")


def sample_timesteps(
    strategy: str,
    count: int,
    num_train_timesteps: int,
    seed: int,
    split: str,
    sample_ids: Sequence[int],
) -> np.ndarray:
    """(n, K) timesteps per sample: the shared set for ``uniform``/``cumulative``; for ``random``,
    K draws from U{0..T-1} with replacement per sample, seeded by (seed, split, sample id)
    (Journey-TRAK's per-sample timesteps, docs/methods.md §2.12)."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    if strategy != "random":
        return np.tile(timestep_set(strategy, count, num_train_timesteps), (len(ids), 1))
    code = split_code(split)
    return np.stack(
        [
            np.random.default_rng([seed, _STREAM_TIMESTEPS, code, int(i)]).integers(
                0, num_train_timesteps, size=count
            )
            for i in ids
        ]
    ).astype(np.int64)
