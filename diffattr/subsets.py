"""Seeded α-subsets of the training set in disjoint pools (docs/methods.md §4.2).

Subset k of pool p is ``train_test_split(rows, train_size=α, random_state=seed + offset_p + k,
stratify=labels)``: for the ``lds`` pool (offset 0) and seed 42 this is exactly D-TRAK's recipe.
Pools have offsets 10 000 apart, so no subset of one pool is drawn with another pool's state:
``lds`` evaluates, ``select`` tunes hyper-parameters (never the evaluation pool), ``retrain``
feeds datamodels, empirical influence and ensembles. Each mask is a pure function of
(labels, α, seed, pool, k), so a training job computes its own and adding subsets adds jobs only.

The ``encoded`` pool is Dai & Gifford's design instead (docs/methods.md §2.18): its E models are the
columns of balanced codes — every training point in exactly E/2 of them, no two points alike
(:func:`balanced_codes`) — so mask k is a function of (N, E, seed, k) and α is not used.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import train_test_split

POOL_OFFSETS = {"lds": 0, "select": 10_000, "retrain": 20_000, "encoded": 30_000}
"""``random_state`` offset per pool; the ``full`` pool is the whole training set."""


def _unrank_combination(rank: int, e: int, k: int) -> np.ndarray:
    """The combination of ``k`` of range(e) with lexicographic index ``rank``, as a bool row."""
    row = np.zeros(e, dtype=bool)
    for position in range(e):
        if k == 0:
            break
        with_position = math.comb(e - position - 1, k - 1)
        if rank < with_position:
            row[position] = True
            k -= 1
        else:
            rank -= with_position
    return row


def balanced_codes(n: int, e: int, seed: int) -> np.ndarray:
    """(n, e) bool codes: n distinct rows with e/2 ones each, drawn uniformly without replacement from
    the C(e, e/2) balanced codes by ``np.random.default_rng(seed)``; model m trains on
    {i : codes[i, m]} (docs/methods.md §2.18)."""
    if e < 2 or e % 2:
        raise ValueError(f"an encoded ensemble needs an even number of models (at least 2), not {e}")
    count = math.comb(e, e // 2)
    if count < n:
        raise ValueError(f"{e} models give {count} codes, fewer than the {n} training samples; use more models")
    if count > np.iinfo(np.int64).max:
        raise ValueError(f"{e} models give more balanced codes than numpy can index; use at most 66 models")
    ranks = np.random.default_rng(seed).choice(count, size=n, replace=False)
    return np.stack([_unrank_combination(int(r), e, e // 2) for r in ranks]) if n else np.zeros((0, e), dtype=bool)


def subset_random_state(seed: int, pool: str, k: int) -> int:
    if pool not in POOL_OFFSETS:
        raise ValueError(f"unknown subset pool {pool!r}; pools are {sorted(POOL_OFFSETS)}")
    if not 0 <= k < 10_000:
        raise ValueError(f"subset index {k} is outside 0..9999")
    return seed + POOL_OFFSETS[pool] + k


def subset_mask(labels: np.ndarray, alpha: float, seed: int, pool: str, k: int, stratify: bool = True,
                count: int | None = None) -> np.ndarray:
    """Boolean mask (N,) of subset ``k`` of ``pool``; ``pool == "full"`` keeps everything; the
    ``encoded`` pool's mask is column k of its ``count`` models' balanced codes."""
    if pool == "full":
        return np.ones(len(labels), dtype=bool)
    if pool == "encoded":
        if count is None or not 0 <= k < count:
            raise ValueError(f"encoded-pool model {k} needs the pool's model count (got {count})")
        return balanced_codes(len(labels), count, subset_random_state(seed, pool, 0))[:, k]
    rows = np.arange(len(labels))
    chosen, _ = train_test_split(
        rows,
        train_size=alpha,
        random_state=subset_random_state(seed, pool, k),
        stratify=labels if stratify else None,
    )
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen] = True
    return mask


def pool_masks(labels: np.ndarray, alpha: float, seed: int, pool: str, count: int, stratify: bool = True) -> np.ndarray:
    """(count, N) boolean masks of a pool's first ``count`` subsets."""
    if not count:
        return np.zeros((0, len(labels)), dtype=bool)
    if pool == "encoded":
        return balanced_codes(len(labels), count, subset_random_state(seed, pool, 0)).T.copy()
    return np.stack([subset_mask(labels, alpha, seed, pool, k, stratify) for k in range(count)])


def write_pool(data_store: str, params: dict, out_path: str) -> np.ndarray:
    """make_subsets: the masks of one pool (count × N, bool) as a zarr array with its definition,
    checksummed and sealed (:mod:`diffattr.integrity`)."""
    import zarr

    from diffattr.atomic import atomic_path
    from diffattr.data.store import read_labels
    from diffattr.integrity import array_options, seal

    labels = read_labels(data_store, "train")
    masks = pool_masks(labels, params["alpha"], params["seed"], params["pool"], params["count"], params["stratify"])
    with atomic_path(out_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(params)
        root.create_array("masks", data=masks, chunks=(max(1, min(len(masks), 256)), masks.shape[1]), **array_options())
        seal(root)
    return masks


def read_pool(path: str) -> np.ndarray:
    """The (count × N) bool masks of the subset store at ``path``; a missing store, a missing
    ``masks`` array or a damaged chunk raises :class:`diffattr.integrity.StoreError` in one sentence."""
    from pathlib import Path

    from diffattr.integrity import StoreError, missing_advice, open_store, read_array, require_arrays

    if not Path(path).exists():
        raise StoreError(f"Subset store '{path}' does not exist; {missing_advice(path)}.")
    root = open_store(path)
    require_arrays(path, root, ("masks",))
    return read_array(path, root["masks"], slice(None), "masks")
