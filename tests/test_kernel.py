"""TRAK kernel and scores (docs/methods.md §0, §2.10) against dense closed forms and an sklearn ridge refit."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from diffattr.kernel import (Kernel, SingularKernelError, build_kernel, masked_train_sums, query_rhs, scores_block, solve,
                             subset_predictions, write_partial)
from diffattr.store import FeatureStore, gather_features, shard_ranges, spec_hash, write_shard

SPEC = {"output": "loss", "projection": {"dim": 5}}


def stores(tmp_path, phi, shard_size=4):
    """Write Φ as shards, gather it, build primal (from partials) and dual kernels."""
    ranges = shard_ranges(len(phi), shard_size)
    shards = [str(tmp_path / f"s{i}.zarr") for i in range(len(ranges))]
    for path, (a, b) in zip(shards, ranges):
        write_shard(path, phi[a:b], a, b, spec_hash(SPEC))
    gather_features(shards, ranges, spec_hash(SPEC), tmp_path / "train.zarr")
    partials = [str(tmp_path / f"g{i}.zarr") for i in range(len(ranges))]
    for shard, part, (a, b) in zip(shards, partials, ranges):
        write_partial(shard, spec_hash(SPEC), a, b, len(phi), part)
    build_kernel("primal", str(tmp_path / "primal.zarr"), partials=partials)
    build_kernel("dual", str(tmp_path / "dual.zarr"), train_path=str(tmp_path / "train.zarr"))
    return FeatureStore(tmp_path / "train.zarr"), Kernel.load(tmp_path / "primal.zarr"), Kernel.load(tmp_path / "dual.zarr")


def test_scores_equal_the_dense_closed_form_in_both_forms(tmp_path):
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(11, 5)).astype(np.float32)
    queries = rng.normal(size=(3, 5))
    train, primal, dual = stores(tmp_path, phi)
    lam_rel = 0.3
    lam = lam_rel * np.trace(phi.T.astype(float) @ phi) / 5
    dense = queries @ np.linalg.inv(phi.T.astype(float) @ phi + lam * np.eye(5)) @ phi.T.astype(float)
    for kernel in (primal, dual):
        got = scores_block(kernel, kernel.factor(lam_rel), train, queries)
        np.testing.assert_allclose(got, dense, rtol=1e-10, atol=1e-12)
    masks = rng.random((6, 11)) < 0.5
    for kernel in (primal, dual):
        solution = solve(kernel.factor(lam_rel), query_rhs(kernel, train, queries))
        got = subset_predictions(kernel, solution, masks, masked_train_sums(train, masks))
        np.testing.assert_allclose(got, masks @ dense.T, rtol=1e-10)


def test_woodbury_dual_form_matches_primal_when_k_exceeds_n(tmp_path):
    rng = np.random.default_rng(1)
    phi = rng.normal(size=(6, 20)).astype(np.float32)  # N = 6 < k = 20
    train, primal, dual = stores(tmp_path, phi, shard_size=3)
    queries = rng.normal(size=(4, 20))
    a = scores_block(primal, primal.factor(1e-2), train, queries)
    b = scores_block(dual, dual.factor(1e-2), train, queries)
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_lambda_zero_with_k_at_least_n_is_refused(tmp_path):
    phi = np.random.default_rng(2).normal(size=(6, 20)).astype(np.float32)
    _, primal, dual = stores(tmp_path, phi, shard_size=3)
    for kernel in (primal, dual):
        with pytest.raises(SingularKernelError, match="λ = 0 with projection dim k = 20 ≥ 6 training samples"):
            kernel.factor(0.0)


def test_unprojected_trak_on_a_linear_model_is_the_ridge_influence(tmp_path):
    """For f(x) = θᵀx fitted by ridge, ∂f(x_q)/∂y_i = x_qᵀ(XᵀX + λI)⁻¹x_i — the TRAK score with
    φ = ∇_θ f = x and Q = 1. The derivative is taken from two sklearn Ridge refits (exact: linear in y)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4))
    y = x @ rng.normal(size=4) + 0.1 * rng.normal(size=30)
    xq = rng.normal(size=(2, 4))
    train, primal, _ = stores(tmp_path, x.astype(np.float32), shard_size=7)
    lam_rel = 0.2
    lam_abs = primal.absolute(lam_rel)
    xf = x.astype(np.float32).astype(np.float64)  # the features as stored
    base = Ridge(alpha=lam_abs, fit_intercept=False).fit(xf, y).predict(xq)
    influence = np.empty((2, 30))
    for i in range(30):
        bumped = y.copy()
        bumped[i] += 1.0
        influence[:, i] = Ridge(alpha=lam_abs, fit_intercept=False).fit(xf, bumped).predict(xq) - base
    got = scores_block(primal, primal.factor(lam_rel), train, xq)
    np.testing.assert_allclose(got, influence, rtol=1e-6, atol=1e-9)
