"""A numpy ``.npz`` archive: ``images`` (N, H, W[, C]) uint8 and ``labels`` (N,), or the same with
``train_``/``test_`` prefixes; optional ``class_names``. Loaded with ``allow_pickle=False``: an object
array (whose reading would unpickle) or a file that is not an archive is refused in one sentence
(:class:`NpzError`), and nothing in it runs."""

from __future__ import annotations

import zipfile

import numpy as np

from diffattr.data.imageset import ImageSet


class NpzError(ValueError):
    """An ``.npz`` file or array diffattr will not read, in one sentence naming the file (and key)."""


def open_npz(path: str) -> np.lib.npyio.NpzFile:
    """``np.load(path, allow_pickle=False)`` when it is an ``.npz`` archive, else :class:`NpzError`
    (numpy reports a foreign file as pickled data; a lone ``.npy`` array is no archive either)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise NpzError(f"Data file '{path}' is not an .npz archive of plain arrays, so diffattr will not load it "
                       f"({type(err).__name__}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise NpzError(f"Data file '{path}' holds a single .npy array, not an .npz archive with an 'images' array.")
    return archive


def read_array(archive: np.lib.npyio.NpzFile, key: str, path: str) -> np.ndarray:
    """``archive[key]``, or :class:`NpzError` naming ``path`` and ``key`` when it is an object array
    (reading one with ``allow_pickle=False`` is refused by numpy before any unpickling)."""
    try:
        return archive[key]
    except ValueError:
        raise NpzError(f"Array '{key}' of data file '{path}' is an object array, which diffattr will not load "
                       f"(reading it would unpickle); save it with a numeric or string dtype.") from None


def _set(archive: np.lib.npyio.NpzFile, prefix: str, path: str, names: list[str] | None) -> ImageSet:
    images = read_array(archive, f"{prefix}images", path)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise NpzError(f"{path}: '{prefix}images' must be uint8 (0..255), found {images.dtype}")
    key = f"{prefix}labels"
    labels = read_array(archive, key, path).astype(np.int64) if key in archive else np.zeros(len(images), np.int64)
    names = names or [str(c) for c in range(int(labels.max()) + 1)]
    split = prefix.rstrip("_") or "all"
    return ImageSet(images, labels, [f"npz:{split}:{i}" for i in range(len(images))], names)


def load_npz_pools(path: str) -> dict[str, ImageSet]:
    """Pools ``train`` and ``test`` (prefixed arrays) or ``all`` from the archive at ``path``."""
    with open_npz(path) as archive:
        names = [str(n) for n in read_array(archive, "class_names", path)] if "class_names" in archive else None
        if "train_images" in archive:
            return {"train": _set(archive, "train_", path, names), "test": _set(archive, "test_", path, names)}
        if "images" not in archive:
            raise NpzError(f"{path} has neither 'images' nor 'train_images'/'test_images' arrays")
        return {"all": _set(archive, "", path, names)}
