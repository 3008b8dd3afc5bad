"""The image store: one zarr group per data set, one subgroup per split (``train``, ``val``,
``gen``, ``base``) holding ``images`` (N, H, W, C) uint8 and ``labels`` (N,) int64, with the class names
and (when the images have them) the per-image captions as group attributes. Reads are checked
(:mod:`diffattr.integrity`): a damaged chunk is one sentence naming the store and its rebuild."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr

from diffattr.atomic import atomic_path
from diffattr.data import ImageSet
from diffattr.integrity import array_options, open_store, read_array, require_arrays, seal


def write_image_store(path: str | os.PathLike, sets: dict[str, ImageSet]) -> None:
    """Write each split of ``sets`` to a zarr group at ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        for split, data in sets.items():
            group = root.create_group(split)
            chunk = (min(len(data.images), 4096), *data.images.shape[1:])
            group.create_array("images", data=data.images, chunks=chunk, **array_options())
            group.create_array("labels", data=data.labels, chunks=(min(len(data.labels), 65536),), **array_options())
            group.attrs["class_names"] = list(data.class_names)
            if data.captions is not None:
                group.attrs["captions"] = list(data.captions)
        seal(root)


def open_split(path: str | os.PathLike, split: str) -> zarr.Group:
    """The checked group of ``split`` in the image store at ``path`` (FileNotFoundError when the
    store is absent, KeyError when the split is, :class:`diffattr.integrity.StoreError` when damaged)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"image store {path} does not exist")
    root = open_store(path)
    if split not in root:
        raise KeyError(f"image store {path} has no split {split!r} (it has {sorted(root.group_keys())})")
    require_arrays(path, root[split], ("images", "labels"))
    return root[split]



def read_images(path: str | os.PathLike, split: str, rows: slice = slice(None)) -> np.ndarray:
    """uint8 images (n, H, W, C) of ``split``: the ``rows`` slice only is read."""
    return read_array(path, open_split(path, split)["images"], rows, f"{split}/images")


def read_labels(path: str | os.PathLike, split: str) -> np.ndarray:
    """int64 labels (n,) of ``split``."""
    return read_array(path, open_split(path, split)["labels"], slice(None), f"{split}/labels")


def read_class_names(path: str | os.PathLike, split: str) -> list[str]:
    return list(open_split(path, split).attrs.get("class_names", []))


def read_captions(path: str | os.PathLike, split: str) -> list[str] | None:
    """The split's per-image captions, or None when it has no caption column."""
    stored = open_split(path, split).attrs.get("captions")
    return None if stored is None else list(stored)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [−1, 1] (docs/methods.md §0)."""
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float (N, C, H, W) in [−1, 1] → uint8 (N, H, W, C), rounding like a PNG save (§7.6)."""
    scaled = np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5, 0, 255)
    return np.rint(scaled).astype(np.uint8).transpose(0, 2, 3, 1).copy()
