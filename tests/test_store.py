"""Sharded feature store: one shard per job, validated gathering, damage named in one sentence."""

from pathlib import Path

import numpy as np
import pytest

from diffattr.store import FeatureStore, ShardError, gather_features, read_shard, shard_ranges, spec_hash, write_shard

SPEC = {"output": "square", "timesteps": 10, "projection": {"type": "gaussian", "dim": 6, "seed": 1}, "shard_size": 5}


def write_all(root: Path, features: np.ndarray, shard_size: int) -> tuple[list[str], list[tuple[int, int]]]:
    ranges = shard_ranges(len(features), shard_size)
    paths = [str(root / f"shard{i}.zarr") for i in range(len(ranges))]
    for path, (a, b) in zip(paths, ranges):
        write_shard(path, features[a:b], a, b, spec_hash(SPEC))
    return paths, ranges


def test_one_shard_and_four_shards_gather_to_identical_features(tmp_path):
    features = np.random.default_rng(0).normal(size=(17, 6)).astype(np.float32)
    one = write_all(tmp_path / "one", features, 17)
    four = write_all(tmp_path / "four", features, 5)
    assert len(four[1]) == 4
    gather_features(*one, spec_hash(SPEC), tmp_path / "one.zarr")
    gather_features(*four, spec_hash(SPEC), tmp_path / "four.zarr")
    np.testing.assert_array_equal(FeatureStore(tmp_path / "one.zarr").read(), features)
    np.testing.assert_array_equal(FeatureStore(tmp_path / "four.zarr").read(), features)


def test_spec_hash_ignores_layout_only():
    assert spec_hash(SPEC) == spec_hash({**SPEC, "shard_size": 99, "batch_size": 3})
    assert spec_hash(SPEC) != spec_hash({**SPEC, "output": "loss"})


def test_deleted_truncated_stale_and_unfinished_shards_are_named(tmp_path):
    features = np.random.default_rng(1).normal(size=(10, 6)).astype(np.float32)
    paths, ranges = write_all(tmp_path, features, 5)
    h = spec_hash(SPEC)
    # stale: written for another spec
    with pytest.raises(ShardError, match=f"feature shard {paths[0]} was written for another feature spec"):
        read_shard(paths[0], "0" * 16, *ranges[0])
    # truncated: cut the chunk file in half
    chunk = next(p for p in Path(paths[1]).rglob("*") if p.is_file() and "c" in p.parts[-3:] and p.stat().st_size > 20)
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with pytest.raises(ShardError, match=f"feature shard {paths[1]} is truncated or corrupted"):
        gather_features(paths, ranges, h, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()
    # deleted
    import shutil

    shutil.rmtree(paths[1])
    with pytest.raises(ShardError, match=f"feature shard {paths[1]} is missing"):
        gather_features(paths, ranges, h, tmp_path / "out.zarr")
    # a job killed mid-write leaves no shard (hence no completion marker) at the final path
    target = tmp_path / "killed.zarr"

    class Killed(BaseException):
        pass

    import diffattr.store as store

    original = store._digest
    store._digest = lambda f: (_ for _ in ()).throw(Killed())
    try:
        with pytest.raises(Killed):
            write_shard(target, features[:5], 0, 5, h)
    finally:
        store._digest = original
    assert not target.exists() and not list(tmp_path.glob(".killed.zarr*"))
    # a shard directory without its marker (e.g. copied by hand mid-way) is refused too
    (Path(paths[0]) / "complete.json").unlink()
    with pytest.raises(ShardError, match="has no completion marker"):
        read_shard(paths[0], h, *ranges[0])


def test_per_step_extras_are_gathered_with_the_features_and_checked(tmp_path):
    """Journey-TRAK's shards carry per-step features; gathering keeps them row-aligned, and a shard
    whose extra array was altered after its marker is named as corrupted."""
    rng = np.random.default_rng(1)
    features, steps = rng.normal(size=(9, 6)).astype(np.float32), rng.normal(size=(9, 3, 6)).astype(np.float32)
    ranges = shard_ranges(9, 4)
    paths = [str(tmp_path / f"shard{i}.zarr") for i in range(len(ranges))]
    for path, (a, b) in zip(paths, ranges):
        write_shard(path, features[a:b], a, b, spec_hash(SPEC), extras={"steps": steps[a:b]})
    gather_features(paths, ranges, spec_hash(SPEC), tmp_path / "out.zarr")
    store = FeatureStore(tmp_path / "out.zarr")
    np.testing.assert_array_equal(store.read(), features)
    for s in range(3):
        np.testing.assert_array_equal(store.read_steps(2, 7)[:, s], steps[2:7, s])
    import zarr

    zarr.open_group(paths[1], mode="r+")["steps"][0, 0, 0] = 99.0
    with pytest.raises(ShardError, match="truncated or corrupted"):
        gather_features(paths, ranges, spec_hash(SPEC), tmp_path / "again.zarr")
