"""Datasets behind one interface: each source returns :class:`ImageSet` pools of uint8 images.

Sources: ``digits`` (scikit-learn's 8×8 digits, shipped with scikit-learn: the embedded default),
``cifar10`` (the python-pickle batch folder), ``image_folder`` (PNG/JPEG, optional class
subfolders) and ``npz``. :mod:`diffattr.data.prepare` turns pools into the train and attributed sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageSet:
    """Images (N, H, W, C) uint8, integer labels (N,), a provenance string per image, class names and,
    optionally, a caption per image (text-to-image models; else captions come from a template)."""

    images: np.ndarray
    labels: np.ndarray
    sources: list[str]
    class_names: list[str]
    captions: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 of shape (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if not (len(self.images) == len(self.labels) == len(self.sources)):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels and {len(self.sources)} sources"
            )
        if self.captions is not None and len(self.captions) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} captions")

    def take(self, rows: np.ndarray) -> ImageSet:
        captions = None if self.captions is None else [self.captions[i] for i in rows]
        return ImageSet(self.images[rows], self.labels[rows], [self.sources[i] for i in rows], self.class_names,
                        captions)


def load_source(source: str, path: str | None, resolution: int | None, color: str) -> dict[str, ImageSet]:
    """Load a source's pools: ``{"all": ...}`` or ``{"train": ..., "test": ...}``."""
    if source == "digits":
        from diffattr.data.digits import load_digits_pools

        return load_digits_pools()
    if path is None:
        raise ValueError(f"data.path is required for data.source={source!r}")
    if source == "cifar10":
        from diffattr.data.cifar10 import load_cifar10_pools

        return load_cifar10_pools(path)
    if source == "image_folder":
        from diffattr.data.image_folder import load_image_folder_pools

        return load_image_folder_pools(path, resolution, color)
    if source == "npz":
        from diffattr.data.npz import load_npz_pools

        return load_npz_pools(path)
    raise ValueError(f"unknown data.source {source!r}")
