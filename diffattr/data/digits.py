"""scikit-learn's digits (1797 images, 8×8, values 0..16): the embedded default data set."""

from __future__ import annotations

import numpy as np

from diffattr.data.imageset import ImageSet


def load_digits_pools() -> dict[str, ImageSet]:
    """One pool ``all``; pixel values 0..16 are scaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    return {
        "all": ImageSet(images, labels, [f"digits:{i}" for i in range(len(labels))], [str(c) for c in range(10)])
    }
