"""Similarity methods that need no gradients (docs/methods.md §2.1, §2.2 control).

``pixel``: flattened images in [−1, 1]; τ = xᵀz (``dot``), cos(x, z) (``cosine``) or −‖x − z‖²
(``l2``, nearest neighbour in pixel space). ``random``: τ = −U(0, 1), drawn per query row from
(seed, query set, row), the control whose LDS is ≈ 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffattr.data.store import read_images, to_model_range
from diffattr.methods.registry import ScoreBlocks
from diffattr.noise import split_code


def query_store(inputs: dict[str, str], query_set: str) -> str:
    """The image store of an attributed set: ``val`` in the data store, ``gen`` in the generated one."""
    return inputs["generated"] if query_set == "gen" else inputs["data"]


def query_images(inputs: dict[str, str], query_set: str) -> np.ndarray:
    """uint8 images of an attributed set (:func:`query_store`)."""
    return read_images(query_store(inputs, query_set), query_set)


def _flat(images: np.ndarray) -> np.ndarray:
    return to_model_range(images).reshape(len(images), -1).astype(np.float64)


def pixel_scores(inputs: dict[str, str], params: dict[str, Any], query_set: str) -> ScoreBlocks:
    train = _flat(read_images(inputs["data"], "train"))
    queries = _flat(query_images(inputs, query_set))
    similarity = params["similarity"]
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


def random_scores(inputs: dict[str, str], params: dict[str, Any], query_set: str) -> ScoreBlocks:
    n_train = len(read_images(inputs["data"], "train"))
    n_queries = len(query_images(inputs, query_set))
    code = split_code(query_set)

    def block(start: int, stop: int) -> np.ndarray:
        return -np.stack([np.random.default_rng([params["seed"], code, row]).random(n_train) for row in range(start, stop)])

    return ScoreBlocks(n_queries, n_train, block, {"seed": params["seed"]})
