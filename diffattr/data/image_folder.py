"""A folder of PNG/JPEG images, optionally one subfolder per class (the subfolder name is the
label), optionally split into ``train/`` and ``test/`` folders of that form. Images are centre-
cropped to a square and resized to ``resolution`` with a bicubic filter. A folder's ``metadata.jsonl``
or ``metadata.csv`` (``file_name``, ``text``: the Hugging Face image-folder convention,
:mod:`diffattr.data.captions`) gives each image its caption, for a text-to-image model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diffattr.data.captions import captions_for
from diffattr.data.imageset import ImageSet

SUFFIXES = {".png", ".jpg", ".jpeg"}


def _files(root: Path) -> list[tuple[Path, str]]:
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    if classes:
        return [(f, d.name) for d in classes for f in sorted(d.iterdir()) if f.suffix.lower() in SUFFIXES]
    return [(f, "") for f in sorted(root.iterdir()) if f.suffix.lower() in SUFFIXES]


def _load(path: Path, resolution: int, color: str) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("L" if color == "gray" else "RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
        array = np.asarray(img, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _pool(root: Path, resolution: int, color: str, names: list[str] | None) -> ImageSet:
    files = _files(root)
    if not files:
        raise FileNotFoundError(f"no PNG or JPEG images under {root}")
    names = names or sorted({c for _, c in files})
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({c for _, c in files} - set(index))
    if unknown:
        raise ValueError(f"{root} has class folders {unknown} that the training folder does not have")
    images = np.stack([_load(f, resolution, color) for f, _ in files])
    labels = np.asarray([index[c] for _, c in files], dtype=np.int64)
    captions = captions_for(root, [f for f, _ in files])
    return ImageSet(images, labels, [f"file:{f}" for f, _ in files], names, captions)


def load_image_folder_pools(folder: str, resolution: int | None, color: str) -> dict[str, ImageSet]:
    """Pools ``all``, or ``train`` and ``test`` when the folder has those two subfolders."""
    root = Path(folder)
    if resolution is None:
        raise ValueError("data.resolution is required for data.source='image_folder'")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _pool(root / "train", resolution, color, None)
        return {"train": train, "test": _pool(root / "test", resolution, color, train.class_names)}
    return {"all": _pool(root, resolution, color, None)}
