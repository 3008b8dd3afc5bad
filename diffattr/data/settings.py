"""The ``data`` block's settings, torch-, pandas- and scikit-learn-free: the DAG reads its defaults
(:mod:`diffattr.data.sizes`, :mod:`diffattr.config`) from the same dataclass that
:func:`diffattr.data.prepare.prepare` parses, so each default is written once (issue 15, item 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` block of the config: ``source`` is required (by the schema too); the optional
    keys' defaults live here (the schema gives none)."""

    source: str
    path: str | None = None
    resolution: int | None = None
    color: str = "rgb"
    classes: list[str] | None = None
    n_train: int | None = None
    n_attributed: int = 200
    n_base: int | None = None
    style: str | None = None
    split_seed: int = 42

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> DataConfig:
        """The block as settings, its missing optional keys at their defaults."""
        return cls(**cfg)
