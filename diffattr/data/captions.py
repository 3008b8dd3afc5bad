"""Per-image captions in the Hugging Face image-folder convention (issue 16, "Training data in").

A folder's captions are a ``metadata.jsonl`` (one JSON object per line) or ``metadata.csv`` file in
that folder, each row naming an image by ``file_name`` (relative to the folder, "/"-separated) and its
caption by ``text``; other columns are ignored. Used for a text-to-image model's training images
(:mod:`diffattr.data.image_folder`) and for the prompts of an attribute run's query folder
(:mod:`diffattr.attribute`).

Every refusal is one :class:`~diffattr.errors.ConfigError` sentence naming the caption file: both
files present, a row without ``file_name`` or ``text``, a name given twice, a name of an image that is
not in the folder, or (:func:`captions_for`) an image of the folder without a caption.
Torch-free: read at DAG time.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from diffattr.errors import ConfigError

CAPTION_FILES = ("metadata.jsonl", "metadata.csv")
"""The caption files of a folder (at most one of them)."""


def caption_file(folder: str | Path) -> Path | None:
    """The folder's caption file, None without one; refused when it has both."""
    found = [Path(folder, name) for name in CAPTION_FILES if Path(folder, name).is_file()]
    if len(found) > 1:
        raise ConfigError(f"Folder '{folder}' holds both metadata.jsonl and metadata.csv; keep one caption file.")
    return found[0] if found else None


def _rows(path: Path) -> list[dict]:
    """The caption file's rows as dicts, or one sentence naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Caption file '{path}' cannot be read ({error}).") from None
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"Caption file '{path}' line {number} is not JSON ({error}).") from None
        if not isinstance(row, dict):
            raise ConfigError(f"Caption file '{path}' line {number} is not a JSON object.")
        rows.append(row)
    return rows


def read_captions(folder: str | Path) -> dict[str, str] | None:
    """``{file_name: text}`` of the folder's caption file (None without one), every named image
    checked to exist in the folder."""
    path = caption_file(folder)
    if path is None:
        return None
    captions: dict[str, str] = {}
    for number, row in enumerate(_rows(path), start=1):
        name, text = row.get("file_name"), row.get("text")
        if not isinstance(name, str) or not name or not isinstance(text, str):
            raise ConfigError(f"Caption file '{path}' row {number} needs a 'file_name' and a 'text' string.")
        if name in captions:
            raise ConfigError(f"Caption file '{path}' names '{name}' twice.")
        if not Path(folder, name).is_file():
            raise ConfigError(f"Caption file '{path}' names '{name}', which is not an image in '{folder}'.")
        captions[name] = text
    return captions


def captions_for(folder: str | Path, files: list[Path]) -> list[str] | None:
    """The caption of each of ``files`` (images under ``folder``), in order; None when the folder has
    no caption file; refused naming the first image without a caption."""
    captions = read_captions(folder)
    if captions is None:
        return None
    root = Path(folder)
    out = []
    for file in files:
        name = Path(file).relative_to(root).as_posix()
        if name not in captions:
            raise ConfigError(f"Caption file '{caption_file(root)}' gives no caption for '{name}'.")
        out.append(captions[name])
    return out
