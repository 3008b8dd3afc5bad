"""Similarity methods that need no gradients (docs/methods.md §2.1, §2.2 control).

``pixel``: flattened images in [−1, 1]; τ = xᵀz (``dot``), cos(x, z) (``cosine``) or −‖x − z‖²
(``l2``, nearest neighbour in pixel space). ``random``: τ = −U(0, 1), drawn per query row from
(seed, query set, row), the control whose LDS is ≈ 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffattr.data.store import read_images, to_model_range
from diffattr.methods.registry import MethodInputs, ScoreBlocks, ScoreContext
from diffattr.noise import split_code


@dataclass(frozen=True)
class PixelSettings:
    """A ``pixel`` method block (docs/methods.md §2.1): ``similarity`` dot, cosine or l2."""

    similarity: str


@dataclass(frozen=True)
class RandomSettings:
    """A ``random`` method block (docs/methods.md §2.2): the draws' ``seed``."""

    seed: int


def query_images(inputs: MethodInputs, query_set: str) -> np.ndarray:
    """uint8 images of an attributed set (``val`` in the data store, ``gen`` in the generated one)."""
    return read_images(inputs.images(query_set), query_set)


def _flat(images: np.ndarray) -> np.ndarray:
    return to_model_range(images).reshape(len(images), -1).astype(np.float64)


def pixel_scores(ctx: ScoreContext) -> ScoreBlocks:
    train = _flat(read_images(ctx.inputs.data, "train"))
    queries = _flat(query_images(ctx.inputs, ctx.query_set))
    similarity = PixelSettings(**ctx.settings).similarity
    if similarity == "cosine":
        train /= np.linalg.norm(train, axis=1, keepdims=True).clip(1e-12)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    train_sq = (train**2).sum(axis=1)

    def block(start: int, stop: int) -> np.ndarray:
        dots = queries[start:stop] @ train.T
        if similarity == "l2":
            return 2 * dots - (queries[start:stop] ** 2).sum(axis=1, keepdims=True) - train_sq
        return dots

    return ScoreBlocks(len(queries), len(train), block, {"similarity": similarity})


def random_scores(ctx: ScoreContext) -> ScoreBlocks:
    n_train = len(read_images(ctx.inputs.data, "train"))
    n_queries = len(query_images(ctx.inputs, ctx.query_set))
    code, seed = split_code(ctx.query_set), RandomSettings(**ctx.settings).seed

    def block(start: int, stop: int) -> np.ndarray:
        return -np.stack([np.random.default_rng([seed, code, row]).random(n_train) for row in range(start, stop)])

    return ScoreBlocks(n_queries, n_train, block, {"seed": seed})
