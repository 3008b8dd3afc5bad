"""Subset pools (docs/methods.md §4.2): disjoint, stratified, reproducible from the seed."""

import numpy as np
from sklearn.model_selection import train_test_split

from diffattr.subsets import POOL_OFFSETS, pool_masks, subset_mask

LABELS = np.repeat(np.arange(4), [40, 30, 20, 10])


def test_pools_never_share_a_subset():
    masks = {p: pool_masks(LABELS, 0.5, 42, p, 20) for p in POOL_OFFSETS}
    seen = set()
    for pool, m in masks.items():
        for row in m:
            key = row.tobytes()
            assert key not in seen, f"a {pool} subset also appears elsewhere"
            seen.add(key)


def test_subsets_are_stratified_alpha_fraction():
    for row in pool_masks(LABELS, 0.5, 42, "lds", 10):
        assert row.sum() == 50
        np.testing.assert_array_equal(np.bincount(LABELS[row]), [20, 15, 10, 5])


def test_subsets_reproduce_from_the_seed_and_match_dtrak_recipe():
    a = pool_masks(LABELS, 0.5, 42, "lds", 5)
    b = pool_masks(LABELS, 0.5, 42, "lds", 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, pool_masks(LABELS, 0.5, 43, "lds", 5))
    # lds subset k with seed 42 is D-TRAK's train_test_split(random_state=42 + k, stratify=labels)
    chosen, _ = train_test_split(np.arange(len(LABELS)), train_size=0.5, random_state=45, stratify=LABELS)
    np.testing.assert_array_equal(np.flatnonzero(a[3]), np.sort(chosen))


def test_full_pool_keeps_everything():
    assert subset_mask(LABELS, 0.5, 42, "full", 0).all()


def test_encoded_pool_masks_are_the_columns_of_distinct_balanced_codes():
    """§2.18: every training sample is in exactly E/2 of the E models and no two samples share a code;
    a training job's own mask (subset_mask) is its column of the pool's codes."""
    from math import comb

    from diffattr.subsets import balanced_codes

    masks = pool_masks(LABELS, 0.5, 42, "encoded", 10)
    assert masks.shape == (10, 100) and (masks.sum(axis=0) == 5).all()
    assert len({col.tobytes() for col in masks.T}) == 100 <= comb(10, 5)
    assert abs(masks.sum(axis=1) - 50).max() < 15
    for k in range(10):
        np.testing.assert_array_equal(subset_mask(LABELS, 0.5, 42, "encoded", k, count=10), masks[k])
    np.testing.assert_array_equal(balanced_codes(100, 10, 1), balanced_codes(100, 10, 1))
    assert not np.array_equal(balanced_codes(100, 10, 1), balanced_codes(100, 10, 2))
