"""Damage is caught where a store is read and named in one sentence with its rebuild; a forced rerun
that fails keeps the good output it was replacing (issue 14).

Every kind of store is written by its real writer at its real path layout (rules/common.smk), then a
chunk file is truncated, garbled or deleted, and the reader must raise one sentence naming the
store, the array, the chunk (read back from the file we damaged) and `snakemake --forcerun RULE`.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffattr.integrity import StoreError, check_safetensors, producing_rule

RNG = np.random.default_rng(14)


def chunk_file(store: Path, array: str, coords: tuple[int, ...]) -> Path:
    """The file of one chunk (zarr v3 default keys: ``{array}/c/i/j``), found independently of diffattr."""
    path = store / array / "c" / "/".join(map(str, coords))
    assert path.is_file(), f"no chunk file {path}"
    return path


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside the compressed frame
    path.write_bytes(bytes(data))


# --- one case per kind of store: (layout, rule, array, chunk to damage, writer, reader) ---------


def _scores(path: Path) -> Callable[[], object]:
    from diffattr.scores import iter_score_blocks, write_scores

    values = RNG.standard_normal((10, 7)).astype(np.float32)
    write_scores(path, 10, 7, lambda a, b: values[a:b], 4, {"sign": -1})
    return lambda: list(iter_score_blocks(path, 3))


def _features(path: Path) -> Callable[[], object]:
    from diffattr.store import FeatureStore, gather_features, shard_ranges, write_shard

    features = RNG.standard_normal((9, 5)).astype(np.float32)
    ranges = shard_ranges(9, 4)
    shards = [str(path.parent / f".src/shard{i}.zarr") for i in range(len(ranges))]
    for shard, (a, b) in zip(shards, ranges):
        write_shard(shard, features[a:b], a, b, "h")
    gather_features(shards, ranges, "h", path)
    return lambda: FeatureStore(path).read()


def _kernel(path: Path) -> Callable[[], object]:
    from diffattr.kernel import Kernel, write_kernel

    gram = np.eye(6) * 2.0
    write_kernel(path, "primal", gram, 20, 6, float(np.trace(gram)))
    return lambda: Kernel.load(path)


def _partial(path: Path) -> Callable[[], object]:
    from diffattr.kernel import build_kernel, write_partial
    from diffattr.store import write_shard

    shard = path.parent / ".src/shard0.zarr"
    write_shard(shard, RNG.standard_normal((8, 4)).astype(np.float32), 0, 8, "h")
    write_partial(str(shard), "h", 0, 8, 8, str(path))
    return lambda: build_kernel("primal", str(path.parent / ".out/kernel.zarr"), [str(path)])


def _measurement(path: Path) -> Callable[[], object]:
    from diffattr.ground_truth import read_measurement, write_measurement

    write_measurement(path, {"val": RNG.standard_normal((3, 6))}, np.array([[0, 1], [0, 2], [0, 3]]))
    return lambda: read_measurement(path, "val")


def _ground_truth(path: Path) -> Callable[[], object]:
    from diffattr.ground_truth import gather, read_ground_truth, write_measurement

    paths = {}
    for k in range(3):
        paths[(k, 0)] = str(path.parent / f".src/{k}/seed0.zarr")
        write_measurement(paths[(k, 0)], {"val": RNG.standard_normal((2, 5))}, np.array([[0, 1], [0, 2]]))
    gather(paths, ["val"], path)
    return lambda: read_ground_truth(path, "val")


def _images(path: Path) -> Callable[[], object]:
    from diffattr.data import ImageSet
    from diffattr.data.store import read_images, write_image_store

    images = RNG.integers(0, 256, size=(6, 4, 4, 1), dtype=np.uint8)
    split = "gen" if "generated" in path.name else "train"
    write_image_store(path, {split: ImageSet(images, np.zeros(6, dtype=np.int64), [f"t:{i}" for i in range(6)], ["0"])})
    return lambda: read_images(path, split)


CASES = {
    "score": ("scores/trak/val.zarr", "score", "scores", (1, 0), _scores),
    "consolidated features": ("features/loss/full/0/seed0/train.zarr", "gather_features", "features", (1, 0), _features),
    "kernel": ("kernels/loss/full/0/seed0/kernel.zarr", "kernel", "gram", (0, 0), _kernel),
    "partial Gram": ("kernels/loss/full/0/seed0/gram/shard0.zarr", "gram_partial", "gram", (0, 0), _partial),
    "measurement": ("ground_truth/lds/part0/3/seed0.zarr", "measure_outputs", "val/losses", (0, 0), _measurement),
    "gathered ground truth": ("ground_truth/lds.zarr", "gather_ground_truth", "val/y", (0, 0, 0), _ground_truth),
    "dataset": ("data/dataset.zarr", "prepare_data", "train/images", (0, 0, 0, 0), _images),
    "generated": ("data/generated.zarr", "generate", "gen/images", (0, 0, 0, 0), _images),
}


@pytest.mark.parametrize("damage", ["truncate", "garble", "delete"])
@pytest.mark.parametrize("kind", list(CASES))
def test_damaged_chunk_is_one_sentence_naming_store_chunk_and_rebuild(tmp_path, kind, damage):
    layout, rule, array, coords, make = CASES[kind]
    store = tmp_path / "results" / layout
    read = make(store)
    read()  # intact: reads
    target = chunk_file(store, array, coords)
    {"truncate": truncate, "garble": garble, "delete": Path.unlink}[damage](target)
    with pytest.raises(StoreError) as caught:
        read()
    message = str(caught.value)
    assert message.startswith(f"Store '{store}' is truncated or corrupted (array '{array}', chunk {coords}")
    assert message.endswith(f"delete it or rebuild it with `snakemake --forcerun {rule}`.")
    assert "\n" not in message


def test_unsealed_store_of_another_writer_still_names_a_truncated_chunk(tmp_path):
    """A store written without diffattr's seal (e.g. before it existed) gets the decode check."""
    import zarr

    from diffattr.scores import iter_score_blocks

    store = tmp_path / "results" / "scores" / "trak" / "val.zarr"
    root = zarr.open_group(str(store), mode="w")
    root.create_array("scores", data=RNG.standard_normal((4, 3)).astype(np.float32), chunks=(2, 3))
    truncate(chunk_file(store, "scores", (1, 0)))
    with pytest.raises(StoreError, match=r"\(array 'scores', chunk \(1, 0\) does not decode"):
        list(iter_score_blocks(store))


def test_the_seal_makes_a_deleted_all_zero_chunk_visible(tmp_path):
    """zarr skips writing all-fill chunks by default, so a missing chunk would read as zeros; the
    writers write every chunk, so deleting one is caught (and the intact store reads its zeros)."""
    from diffattr.scores import iter_score_blocks, write_scores

    store = tmp_path / "scores" / "m" / "val.zarr"
    write_scores(store, 4, 3, lambda a, b: np.zeros((b - a, 3)), 2, {"sign": -1})
    assert np.all(np.concatenate([b for _, b in iter_score_blocks(store)]) == 0)
    chunk_file(store, "scores", (1, 0)).unlink()
    with pytest.raises(StoreError, match=r"chunk \(1, 0\) is missing"):
        list(iter_score_blocks(store))


def test_feature_shard_sentence_names_the_shard_and_featurize(tmp_path):
    from diffattr.store import ShardError, gather_features, shard_ranges, write_shard

    ranges = shard_ranges(8, 4)
    shards = [str(tmp_path / f"features/loss/full/0/seed0/train/shard{i}.zarr") for i in range(2)]
    for shard, (a, b) in zip(shards, ranges):
        write_shard(shard, RNG.standard_normal((b - a, 3)).astype(np.float32), a, b, "h")
    truncate(chunk_file(Path(shards[1]), "features", (0, 0)))
    with pytest.raises(ShardError) as caught:
        gather_features(shards, ranges, "h", tmp_path / "features/loss/full/0/seed0/train.zarr")
    assert str(caught.value).startswith(f"feature shard {shards[1]} is truncated or corrupted")
    assert str(caught.value).endswith("`snakemake --forcerun featurize`.")


@pytest.mark.parametrize("path, rule", [
    ("results/features/loss/full/0/seed0/train/shard3.zarr", "featurize"),
    ("/abs/out/features/loss/lds/2/seed1/val.zarr", "gather_features"),
    ("results/kernels/loss/full/0/seed0/gram/shard1.zarr", "gram_partial"),
    ("results/kernels/loss/full/0/seed0/kernel.zarr", "kernel"),
    ("results/scores/trak/gen.zarr", "score"),
    ("results/scores/journey_trak/trajectory.zarr", "score_trajectory"),
    ("results/ground_truth/select/part1/7/seed0.zarr", "measure_outputs"),
    ("results/ground_truth/select.zarr", "gather_ground_truth"),
    ("results/data/dataset.zarr", "prepare_data"),
    ("results/data/generated.zarr", "generate"),
    ("results/models/lds/4/seed0/step120.safetensors", "train_model"),
    ("elsewhere/thing.zarr", None),
])
def test_producing_rule_follows_the_path_layout(path, rule):
    assert producing_rule(path) == rule


def test_truncated_checkpoint_is_named_with_train_model(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "models" / "full" / "0" / "seed0" / "step120.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"w": RNG.standard_normal((32, 8)).astype(np.float32), "b": np.ones(8, np.float32)}, str(path))
    check_safetensors(path)  # whole: passes, and the library agrees it loads
    assert set(load_file(str(path))) == {"w", "b"}
    truncate(path)
    with pytest.raises(StoreError) as caught:
        check_safetensors(path)
    assert str(caught.value).startswith(f"Checkpoint '{path}' is truncated or corrupted (")
    assert str(caught.value).endswith("`snakemake --forcerun train_model`.")
    with pytest.raises(Exception):  # the library itself refuses it too: the check is not stricter than needed
        load_file(str(path))
    path.write_bytes(b"\x05")
    with pytest.raises(StoreError, match="unreadable header"):
        check_safetensors(path)


def test_loading_a_truncated_model_checkpoint_names_it(tmp_path):
    """The loaders (DDPM UNet, LoRA) run the check before safetensors reads the file."""
    from conftest import TINY_UNET
    from diffattr.models.ddpm import build_unet, load_unet, save_weights

    path = tmp_path / "models" / "full" / "0" / "seed0" / "step12.safetensors"
    path.parent.mkdir(parents=True)
    save_weights(build_unet(TINY_UNET), path, {})
    assert load_unet(path, TINY_UNET) is not None
    truncate(path)
    with pytest.raises(StoreError, match=r"Checkpoint '.*step12.safetensors' is truncated.*--forcerun train_model"):
        load_unet(path, TINY_UNET)


# --- show-attribution on a truncated score chunk ------------------------------------------------


def test_show_attribution_on_a_truncated_score_chunk_prints_the_sentence(tmp_path, capsys):
    from diffattr.cli import main
    from diffattr.data import ImageSet
    from diffattr.data.store import write_image_store
    from diffattr.scores import write_scores

    out = tmp_path / "out"
    images = RNG.integers(0, 256, size=(12, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(12, dtype=np.int64) % 10
    write_image_store(out / "data" / "dataset.zarr", {"train": ImageSet(images[:8], labels[:8], [f"t:{i}" for i in range(8)], list("0123456789")),
                                                       "val": ImageSet(images[8:], labels[8:], [f"v:{i}" for i in range(4)], list("0123456789"))})
    scores = RNG.standard_normal((4, 8)).astype(np.float32)
    store = out / "scores" / "trak" / "val.zarr"
    write_scores(store, 4, 8, lambda a, b: scores[a:b], 2, {"sign": -1, "kind": "trak"})
    config = tmp_path / "overlay.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(out)}))
    args = ["show-attribution", "--config", str(config), "--method", "trak", "--output",
            str(tmp_path / "grid.png")]
    assert main([*args, "--sample", "3"]) == 0  # intact
    capsys.readouterr()
    truncate(chunk_file(store, "scores", (1, 0)))  # rows 2, 3
    assert main([*args, "--sample", "3"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err == (f"diffattr: error: Store '{store}' is truncated or corrupted (array 'scores', chunk (1, 0) does not "
                   "decode: RuntimeError); delete it or rebuild it with `snakemake --forcerun score`.")


# --- workflow tier: a forced gather over a corrupted shard keeps the consolidated store -------


def tree_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` by relative name (names and bytes: byte identity)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.workflow
def test_forced_gather_over_a_corrupted_shard_fails_and_keeps_the_store(tmp_path):
    from workflow import overlay, snakemake

    out = tmp_path / "results"
    config = overlay(tmp_path, "out", {"output_dir": str(out), "evaluation": {"methods": ["trak"]}})
    target = out / "features" / "loss" / "full" / "0" / "seed0" / "train.zarr"
    args = ["--cores", "2", "--configfile", "config/smoke.yaml", config]  # --configfile takes the rest: last
    first = snakemake(str(target), *args, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    before = tree_digest(target)
    assert "features/c/0/0" in before and "features/c/1/0" in before

    shard = target.parent / "train" / "shard1.zarr"
    truncate(chunk_file(shard, "features", (0, 0)))
    forced = snakemake(str(target), "--forcerun", "gather_features", *args, timeout=600)
    assert forced.returncode != 0
    log = (out / "logs" / "gather_features" / "loss" / "full" / "0" / "seed0" / "train.log").read_text()
    assert f"feature shard {shard} is truncated or corrupted" in log
    assert "`snakemake --forcerun featurize`" in log
    assert target.is_dir() and tree_digest(target) == before  # the good consolidated store, byte for byte
    assert not list(target.parent.glob(".train.zarr.tmp-*"))  # and no half-written replacement left
    shutil.rmtree(out)


# --- the two Snakefile hooks that make update() safe (real Snakemake, a two-rule toy workflow) -------

HOOKED = '''
from diffattr.integrity import mark_failed_incomplete, settle_backups, update_outputs

rule a:
    output: update(directory("out/d"))
    params: p=config.get("pp", 1)
    script: "write.py"

onstart:
    settle_backups(update_outputs(workflow.dag.needrun_jobs()), workflow.persistence.path / "backups")

onerror:
    mark_failed_incomplete(workflow)
'''

WRITE = '''
from diffattr.atomic import atomic_path

if snakemake.config.get("fail"):  # not a param: the rerun's params are those of a good run
    raise ValueError("failing on purpose")
with atomic_path(snakemake.output[0]) as tmp:
    tmp.mkdir()
    (tmp / "x").write_text(str(snakemake.params.p))
'''


@pytest.mark.workflow
def test_update_hooks_keep_a_failed_rerun_out_of_date_and_clear_a_stale_backup(tmp_path):
    import subprocess
    import sys

    (tmp_path / "Snakefile").write_text(HOOKED)
    (tmp_path / "write.py").write_text(WRITE)  # a script: job, like every rule of the workflow

    def smk(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    assert smk().returncode == 0
    x = tmp_path / "out" / "d" / "x"
    assert x.read_text() == "1"
    failed = smk("--config", "pp=2", "fail=True")  # a rerun for changed params fails ...
    assert failed.returncode != 0 and "failing on purpose" in failed.stdout + failed.stderr
    assert x.read_text() == "1"  # ... the finished output is kept (update(): not deleted before the job) ...
    # ... and is not taken as up to date with the new params: the hook marked it incomplete
    refused = smk("-n", "--config", "pp=2")
    assert refused.returncode != 0 and "IncompleteFilesException" in refused.stdout + refused.stderr
    planned = smk("-n", "--rerun-incomplete", "--config", "pp=2")
    assert planned.returncode == 0 and "rule a:" in planned.stdout, planned.stdout

    # a run killed mid-job leaves Snakemake's backup of out/d; without settle_backups the next
    # backup of it fails with FileExistsError
    stale = tmp_path / ".snakemake" / "backups" / "out" / "d"
    shutil.copytree(x.parent, stale)
    rerun = smk("--rerun-incomplete", "--config", "pp=3")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert x.read_text() == "3" and not stale.exists()


# --- the remaining stores: subset masks, trajectory, DAS residuals, scores read by counterfactual ---


def _train_store(path: Path, n: int = 10) -> str:
    """A small image store with a ``train`` split of ``n`` 8×8 images, two classes alternating."""
    from diffattr.data import ImageSet
    from diffattr.data.store import write_image_store

    images = RNG.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    write_image_store(path, {"train": ImageSet(images, np.arange(n, dtype=np.int64) % 2, [f"t:{i}" for i in range(n)], ["a", "b"])})
    return str(path)


def _tiny_model(path: Path) -> str:
    import torch

    from conftest import TINY_UNET
    from diffattr.models.ddpm import build_unet, save_weights

    torch.manual_seed(14)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(build_unet(TINY_UNET).eval(), path, {})
    return str(path)


def _masks(path: Path) -> Callable[[], object]:
    from diffattr.subsets import pool_masks, read_pool, write_pool

    data = _train_store(path.parent.parent / "data" / "dataset.zarr")
    params = {"alpha": 0.5, "seed": 3, "pool": "lds", "count": 4, "stratify": True}
    write_pool(data, params, str(path))
    expected = pool_masks(np.arange(10) % 2, 0.5, 3, "lds", 4)
    assert np.array_equal(read_pool(str(path)), expected)  # the checked read returns the masks written
    return lambda: read_pool(str(path))


def _trajectory(path: Path) -> Callable[[], object]:
    from conftest import SCHEDULER, TINY_UNET
    from diffattr.data import ImageSet
    from diffattr.data.store import to_uint8, write_image_store
    from diffattr.models.ddpm import load_unet
    from diffattr.sample import ddim_trajectory, image_seeds, read_trajectory, record_trajectory

    model = _tiny_model(path.parent / ".src" / "step1.safetensors")
    images = ddim_trajectory(load_unet(model, TINY_UNET), SCHEDULER, image_seeds(0, 3), 2, 0.0, 3, record=False)[0]
    generated = path.parent / "generated.zarr"
    write_image_store(generated, {"gen": ImageSet(to_uint8(images), np.full(3, -1), ["g"] * 3, [])})
    params = {"unet": TINY_UNET, "scheduler": SCHEDULER, "generate": {"count": 3, "steps": 2, "seed": 0}}
    written = record_trajectory(model, params, str(generated), str(path))
    stored, timesteps = read_trajectory(str(path), 1, 3)
    assert np.array_equal(stored, written[1:3]) and list(timesteps) == [500, 0]
    return lambda: read_trajectory(str(path), 1, 3)


def _residuals(path: Path) -> Callable[[], object]:
    from conftest import SCHEDULER, TINY_UNET
    from diffattr.methods.das import read_residual_weights, write_residuals

    data = _train_store(path.parent / ".src" / "dataset.zarr", 5)
    model = _tiny_model(path.parent / ".src" / "step1.safetensors")
    params = {"unet": TINY_UNET, "scheduler": SCHEDULER, "timesteps": 3, "noise_seed": 0, "batch_size": 5}
    weights = write_residuals(model, data, params, str(path))
    assert np.array_equal(read_residual_weights(str(path)), weights)
    return lambda: read_residual_weights(str(path))


def _counterfactual_scores(path: Path) -> Callable[[], object]:
    from diffattr.counterfactual import removal_for
    from diffattr.scores import write_scores

    values = RNG.standard_normal((10, 7)).astype(np.float32)
    write_scores(path, 10, 7, lambda a, b: values[a:b], 4, {"sign": -1})
    # sign −1 (HELPS): the 2 most responsible are the 2 largest scores of generated sample 5 (chunk (1, 0))
    assert sorted(removal_for(str(path), 7, 5, 2).tolist()) == sorted(np.argsort(-values[5])[:2].tolist())
    return lambda: removal_for(str(path), 7, 5, 2)


MORE_CASES = {
    "subset masks": ("subsets/lds.zarr", "make_subsets", "masks", (0, 0), _masks),
    "trajectory": ("data/trajectory.zarr", "trajectory", "x0", (0, 0, 0, 0, 0), _trajectory),
    "DAS residuals": ("residuals/das/full/0/seed0.zarr", "residuals", "weights", (0,), _residuals),
    "scores read by counterfactual": ("scores/trak/gen.zarr", "score", "scores", (1, 0), _counterfactual_scores),
}
CASES.update(MORE_CASES)


@pytest.mark.parametrize("damage", ["truncate", "garble", "delete"])
@pytest.mark.parametrize("kind", list(MORE_CASES))
def test_damaged_chunk_of_the_other_stores_is_one_sentence_naming_store_chunk_and_rebuild(tmp_path, kind, damage):
    """The same contract as the cases above, for the stores routed through diffattr.integrity later."""
    test_damaged_chunk_is_one_sentence_naming_store_chunk_and_rebuild(tmp_path, kind, damage)


@pytest.mark.parametrize("reader, layout", [
    ("diffattr.subsets:read_pool", "subsets/select.zarr"),
    ("diffattr.sample:read_trajectory", "data/trajectory.zarr"),
    ("diffattr.methods.das:read_residual_weights", "residuals/das/full/0/seed0.zarr"),
])
def test_a_missing_store_is_one_sentence_naming_it_and_its_rule(tmp_path, reader, layout):
    import importlib

    module, name = reader.split(":")
    path = tmp_path / "results" / layout
    with pytest.raises(StoreError) as caught:
        getattr(importlib.import_module(module), name)(str(path))
    message = str(caught.value)
    assert f"'{path}' does not exist; build it with `snakemake --forcerun {producing_rule(path)}`." in message
    assert producing_rule(path) is not None and "\n" not in message


@pytest.mark.parametrize("path, rule", [
    ("results/subsets/lds.zarr", "make_subsets"),
    ("results/data/trajectory.zarr", "trajectory"),
    ("results/residuals/das/full/0/seed0.zarr", "residuals"),
    ("results/counterfactual/models/trak/s3_k10.safetensors", "counterfactual_train"),
    ("results/customization/models/g0.safetensors", "customize"),
    ("results/customization/images/g1.zarr", "customize"),
])
def test_producing_rule_knows_the_other_store_layouts(path, rule):
    assert producing_rule(path) == rule
