"""CIFAR-10 in its standard python-pickle batch folder (``data_batch_1..5``, ``test_batch``,
``batches.meta``), as distributed by its authors. The batches are plain dicts of numpy arrays and
lists; they are read with a restricted unpickler that refuses anything but those types."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from diffattr.data import ImageSet

_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("builtins", "bytes")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 batch file {path} is missing")
    with path.open("rb") as f:
        raw = _BatchUnpickler(f, encoding="bytes").load()
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _to_set(batches: list[dict], names: list[str], split: str) -> ImageSet:
    data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"CIFAR-10 {split} batches hold rows of {data.shape[1:]} values, expected 3072")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    labels = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
    return ImageSet(images, labels, [f"cifar10:{split}:{i}" for i in range(len(labels))], names)


def load_cifar10_pools(folder: str) -> dict[str, ImageSet]:
    """Pools ``train`` (50 000) and ``test`` (10 000) with the dataset's class names."""
    root = Path(folder)
    meta = _read_batch(root / "batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    train = [_read_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    return {"train": _to_set(train, names, "train"), "test": _to_set([_read_batch(root / "test_batch")], names, "test")}
