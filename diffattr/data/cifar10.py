"""CIFAR-10 in its standard python-pickle batch folder (``data_batch_1..5``, ``test_batch``,
``batches.meta``), as distributed by its authors. The batches are plain dicts of numpy arrays and
lists; they are read with a restricted unpickler that refuses anything but those types."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from diffattr.data.imageset import ImageSet

_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("builtins", "bytes")}
"""The only globals a CIFAR-10 batch pickle names (numpy arrays, their dtypes, bytes)."""
BATCH_KEYS = ("data", "labels")


class CifarBatchError(ValueError):
    """A CIFAR-10 batch file diffattr will not read, in one sentence naming the file."""


class _Refused(pickle.UnpicklingError):
    """A global the batch format never holds; raised before it is looked up, so nothing of it runs."""


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in _ALLOWED:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path, keys: tuple[str, ...]) -> dict:
    """The batch dict (keys decoded to str) read by the restricted unpickler; a file that names any
    other global (``os.system``, ``builtins.open``, …), does not parse, or lacks ``keys`` is refused
    with :class:`CifarBatchError` — the refused global is never imported, let alone called."""
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 batch file {path} is missing")
    try:
        with path.open("rb") as f:
            raw = _BatchUnpickler(f, encoding="bytes").load()
    except _Refused as refused:
        raise CifarBatchError(f"CIFAR-10 batch file '{path}' refers to {refused}, which a CIFAR-10 batch never holds, "
                              f"so diffattr refuses it without running it.") from None
    except Exception as err:  # a truncated or foreign file: every callable it could reach is in _ALLOWED
        raise CifarBatchError(f"CIFAR-10 batch file '{path}' is not a python-pickle batch of numpy arrays "
                              f"({type(err).__name__}: {err}).") from None
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()} if isinstance(raw, dict) else {}
    absent = [k for k in keys if k not in batch]
    if absent:
        raise CifarBatchError(f"CIFAR-10 batch file '{path}' lacks the entries {absent}.")
    return batch


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
    meta = _read_batch(root / "batches.meta", ("label_names",))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    train = [_read_batch(root / f"data_batch_{i}", BATCH_KEYS) for i in range(1, 6)]
    test = [_read_batch(root / "test_batch", BATCH_KEYS)]
    return {"train": _to_set(train, names, "train"), "test": _to_set(test, names, "test")}
