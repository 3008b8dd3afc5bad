"""A numpy ``.npz`` archive: ``images`` (N, H, W[, C]) uint8 and ``labels`` (N,), or the same with
``train_``/``test_`` prefixes; optional ``class_names``. Loaded with ``allow_pickle=False``."""

from __future__ import annotations

import numpy as np

from diffattr.data import ImageSet


def _set(archive: np.lib.npyio.NpzFile, prefix: str, path: str, names: list[str] | None) -> ImageSet:
    images = archive[f"{prefix}images"]
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: '{prefix}images' must be uint8 (0..255), found {images.dtype}")
    labels = archive[f"{prefix}labels"].astype(np.int64) if f"{prefix}labels" in archive else np.zeros(len(images), np.int64)
    names = names or [str(c) for c in range(int(labels.max()) + 1)]
    split = prefix.rstrip("_") or "all"
    return ImageSet(images, labels, [f"npz:{split}:{i}" for i in range(len(images))], names)


def load_npz_pools(path: str) -> dict[str, ImageSet]:
    with np.load(path, allow_pickle=False) as archive:
        names = [str(n) for n in archive["class_names"]] if "class_names" in archive else None
        if "train_images" in archive:
            return {"train": _set(archive, "train_", path, names), "test": _set(archive, "test_", path, names)}
        if "images" not in archive:
            raise ValueError(f"{path} has neither 'images' nor 'train_images'/'test_images' arrays")
        return {"all": _set(archive, "", path, names)}
