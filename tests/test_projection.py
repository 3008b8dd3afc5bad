"""Projection (docs/methods.md §0, §7.3): seed-addressable, device-independent, unbiased inner products."""

import numpy as np
import pytest
import torch

from diffattr.projection import ProjectionConfig, Projector, block_numpy, block_torch, sketch_numpy, sketch_torch
from test_gpu_check import lowbias32  # the hash in plain Python integers (an independent reference)


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


def test_sketch_hash_follows_its_formula_and_torch_twin_agrees():
    """b_i = h(key_i ⊕ C₃) mod m, s_i = top bit of h(key_i ⊕ C₄), key_i = h(h(seed ⊕ C₁) + i)."""
    seed, m = 7, 1000
    buckets, signs = sketch_numpy(seed, 100, 140, m)
    seed_key = lowbias32(seed ^ 0x9E3779B9)
    for n, i in enumerate(range(100, 140)):
        key = lowbias32(seed_key + i)
        assert int(buckets[n]) == lowbias32(key ^ 0xC2B2AE35) % m
        assert float(signs[n]) == (1.0 if lowbias32(key ^ 0x27D4EB2F) >> 31 else -1.0)
    for start, stop, m in [(0, 5000, 257), (3_000_000, 3_004_096, 131072)]:
        b_np, s_np = sketch_numpy(3, start, stop, m)
        b_t, s_t = sketch_torch(3, start, stop, m, "cpu")
        assert torch.equal(b_np, b_t) and torch.equal(s_np, s_t)
    b, s = sketch_numpy(0, 0, 200_000, 64)
    from scipy.stats import chisquare
    assert chisquare(np.bincount(b.numpy(), minlength=64)).pvalue > 1e-3
    assert abs(float(s.mean())) < 0.01


def test_sketch_projection_is_count_sketch_then_gaussian():
    """φ = Gᵀ(Sᵀg) against the dense product with S built entry by entry; truncation holds at fixed m."""
    p, m, k = 3000, 512, 24
    g = torch.from_numpy(np.random.default_rng(4).normal(size=(3, p)))
    cfg = ProjectionConfig(type="sketch", dim=k, seed=5, sketch_dim=m)
    proj = Projector(cfg, p)
    proj.sketch_rows = 700  # several chunks
    buckets, signs = sketch_numpy(5, 0, p, m)
    S = np.zeros((p, m))
    S[np.arange(p), buckets.numpy()] = signs.numpy()
    G = block_numpy("gaussian", 5, 0, m, k).double().numpy()
    np.testing.assert_allclose(proj(g.float()).double().numpy(), g.numpy() @ S @ G, rtol=1e-4, atol=1e-3)
    short = Projector(ProjectionConfig(type="sketch", dim=10, seed=5, sketch_dim=m), p)
    torch.testing.assert_close(short(g.float()), proj(g.float())[:, :10])
    assert proj.dim == k


def test_sketch_inner_products_are_unbiased_with_the_gaussian_spread():
    """E[φᵀφ'] = k·gᵀg' over seeds, and for m ≫ k the spread is the Gaussian projection's (ratio ≈ 1)."""
    rng = np.random.default_rng(0)
    p, k = 4000, 16
    g = torch.from_numpy(rng.normal(size=(2, p)).astype(np.float32))
    g[1] += 0.5 * g[0]
    exact = k * float(g[0].double() @ g[1].double())
    draws = {"sketch": [], "gaussian": []}
    for seed in range(200):
        for kind in draws:
            phi = Projector(ProjectionConfig(type=kind, dim=k, seed=seed, sketch_dim=2048), p)(g)
            draws[kind].append(float(phi[0] @ phi[1]))
    sketch, gauss = np.asarray(draws["sketch"]), np.asarray(draws["gaussian"])
    assert abs(sketch.mean() - exact) < 4 * sketch.std(ddof=1) / np.sqrt(len(sketch))
    assert 0.6 < sketch.var() / gauss.var() < 1.6


def test_low_precision_projection_on_a_cpu_without_native_matmul_upcasts_and_agrees(monkeypatch):
    """bf16 storage: where the CPU has no native bf16 product (diffattr.projection.fast_matmul), the
    product runs in float32 on the bf16-rounded operands; both paths equal that float64 reference to
    bf16's output rounding, and the upcast one to float32 rounding."""
    import diffattr.projection as projection

    g = torch.from_numpy(np.random.default_rng(5).normal(size=(4, 3000)).astype(np.float32))
    cfg = ProjectionConfig(type="gaussian", dim=64, seed=1, dtype="bfloat16", block_rows=700)
    reference = g.to(torch.bfloat16).double() @ block_numpy("gaussian", 1, 0, 3000, 64).to(torch.bfloat16).double()
    for native in (False, True):
        monkeypatch.setattr(projection, "fast_matmul", lambda device, dtype, native=native: native)
        for budget in (1 << 30, 3000 * 64 * 2, 0):  # float32 storage (when not native), bf16 storage, streamed
            proj = Projector(cfg, 3000, max_cached_bytes=budget)
            assert (proj.matrix is None) == (budget == 0)
            out = proj(g).double()
            tol = 2e-2 if native else 1e-4  # the native product rounds its output to bf16
            torch.testing.assert_close(out, reference, rtol=tol, atol=tol * reference.abs().max().item())
    assert projection.fast_matmul(torch.device("cpu"), torch.float32)
    assert projection.fast_matmul(torch.device("cuda"), torch.bfloat16)
