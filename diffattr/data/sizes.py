"""Split sizes known before any data is loaded, so the DAG (featurize shards, kernel form) can be
built — and dry-run — without touching the data: digits and CIFAR-10 sizes are fixed by the data
sets; image folders are counted by listing files; npz labels are read without the images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
"""Images per class of scikit-learn's digits (1797 in all); a test checks them against sklearn."""
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _kept(counts: dict[str, int], classes: list[str] | None) -> int:
    if not classes:
        return sum(counts.values())
    names = list(counts)
    total = 0
    for c in classes:
        key = str(c) if str(c) in counts else (names[int(c)] if str(c).isdigit() and int(c) < len(names) else None)
        if key is None:
            raise ValueError(f"data.classes names {c!r}, which is not a class of the data ({names})")
        total += counts[key]
    return total


def _folder_counts(root: Path) -> dict[str, int]:
    from diffattr.data.image_folder import _files

    counts: dict[str, int] = {}
    for _, label in _files(root):
        counts[label] = counts.get(label, 0) + 1
    return counts


def _npz_counts(path: str, prefix: str) -> dict[str, int]:
    with np.load(path, allow_pickle=False) as archive:
        if f"{prefix}labels" not in archive:
            return {"0": len(archive[f"{prefix}images"])}
        labels = archive[f"{prefix}labels"]
    return {str(c): int(n) for c, n in enumerate(np.bincount(labels.astype(np.int64)))}


def split_sizes(data: dict[str, Any], generate: dict[str, Any]) -> dict[str, int]:
    """Rows of the ``train``, ``val``, ``gen`` (and ``base``) splits that :func:`diffattr.data.prepare.prepare`
    and ``generate`` will write."""
    source, classes = data["source"], data.get("classes")
    n_attr, n_train = data.get("n_attributed", 200), data.get("n_train")
    if source == "digits":
        pools = {"all": dict(zip(map(str, range(10)), DIGITS_CLASS_COUNTS))}
    elif source == "cifar10":
        pools = {"train": dict.fromkeys(CIFAR10_CLASSES, 5000), "test": dict.fromkeys(CIFAR10_CLASSES, 1000)}
    elif source == "image_folder":
        root = Path(data["path"])
        split = (root / "train").is_dir() and (root / "test").is_dir()
        pools = {"train": _folder_counts(root / "train"), "test": _folder_counts(root / "test")} if split else {"all": _folder_counts(root)}
    else:
        with np.load(data["path"], allow_pickle=False) as archive:
            split = "train_images" in archive
        pools = {"train": _npz_counts(data["path"], "train_"), "test": _npz_counts(data["path"], "test_")} if split else {"all": _npz_counts(data["path"], "")}
    if "all" in pools:
        available = _kept(pools["all"], classes) - n_attr
    else:
        available = _kept(pools["train"], classes)
    n_base = data.get("n_base") or 0
    sizes = {"train": n_train or available - n_base, "val": n_attr, "gen": generate["count"]}
    return sizes | ({"base": n_base} if n_base else {})
