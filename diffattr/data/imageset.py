"""The one in-memory image collection every data source returns (:func:`diffattr.data.load_source`).

A leaf module: it imports nothing of ours, so the loaders (``digits``, ``cifar10``, ``image_folder``,
``npz``) import it without importing :mod:`diffattr.data` back.
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
        """The images at ``rows`` (an index array), in that order, with their labels, sources and captions."""
        captions = None if self.captions is None else [self.captions[i] for i in rows]
        return ImageSet(self.images[rows], self.labels[rows], [self.sources[i] for i in rows], self.class_names,
                        captions)
