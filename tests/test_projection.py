"""Projection (docs/methods.md §0, §7.3): seed-addressable, device-independent, unbiased inner products."""

import numpy as np
import pytest
import torch

from diffattr.projection import ProjectionConfig, Projector, block_numpy, block_torch


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_numpy_and_torch_generators_give_the_same_matrix(kind):
    """The torch integer path is what runs on CUDA; on the CPU it must equal the numpy path."""
    for start, stop, k in [(0, 50, 7), (123_456, 123_600, 64), (5, 6, 1000)]:
        assert torch.equal(block_numpy(kind, 3, start, stop, k), block_torch(kind, 3, start, stop, k, "cpu"))


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_blocks_and_truncation_are_consistent(kind):
    whole = block_numpy(kind, 9, 0, 300, 96)
    parts = torch.cat([block_numpy(kind, 9, a, min(a + 70, 300), 96) for a in range(0, 300, 70)])
    assert torch.equal(whole, parts)
    # the first k' columns of a k-projection are the k'-projection with the same seed (§7.3)
    assert torch.equal(whole[:, :40], block_numpy(kind, 9, 0, 300, 40))
    assert not torch.equal(whole, block_numpy(kind, 10, 0, 300, 96))


def test_gaussian_entries_are_standard_normal():
    x = block_numpy("gaussian", 1, 0, 4000, 256).numpy().ravel()
    assert abs(x.mean()) < 0.005 and abs(x.std() - 1) < 0.005
    assert abs(np.mean(x**4) - 3) < 0.05  # kurtosis of a normal


def test_projected_inner_products_are_unbiased():
    """E[φᵀφ'] = k·gᵀg' with no 1/√k scaling: average over 40 seeds, within 4 standard errors."""
    rng = np.random.default_rng(0)
    g = torch.from_numpy(rng.normal(size=(2, 500)).astype(np.float32))
    k = 64
    exact = k * float(g[0] @ g[1])
    draws = []
    for seed in range(40):
        phi = Projector(ProjectionConfig(type="gaussian", dim=k, seed=seed), 500)(g)
        draws.append(float(phi[0] @ phi[1]))
    se = np.std(draws, ddof=1) / np.sqrt(len(draws))
    assert abs(np.mean(draws) - exact) < 4 * se


def test_cached_and_streamed_projection_agree_and_no_projection_is_identity():
    g = torch.from_numpy(np.random.default_rng(1).normal(size=(5, 1000)).astype(np.float32))
    cfg = ProjectionConfig(type="rademacher", dim=48, seed=2, block_rows=128)
    cached = Projector(cfg, 1000)
    streamed = Projector(cfg, 1000, max_cached_bytes=0)
    assert cached.matrix is not None and streamed.matrix is None
    torch.testing.assert_close(cached(g), streamed(g), rtol=1e-5, atol=1e-4)
    reference = g.double() @ block_numpy("rademacher", 2, 0, 1000, 48).double()
    torch.testing.assert_close(cached(g).double(), reference, rtol=1e-5, atol=1e-3)
    assert torch.equal(Projector(ProjectionConfig(dim=None), 1000)(g), g)
