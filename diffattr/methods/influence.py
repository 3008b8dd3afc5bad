"""Influence functions with Hessian-vector products: exact, conjugate gradient, LiSSA (docs/methods.md §2.8).

Koh & Liang's influence of a training sample z on a measurement m at a query x is
IF(x, z) = −∇m(x)ᵀ H⁻¹ ∇L(z), H = ∇²R(θ). We return the opposite sign,

    τ(x, z) = ∇m(x)ᵀ (H + λI)⁻¹ ∇L(z) = s_test(x)ᵀ ∇L(z),   s_test(x) = (H + λI)⁻¹ ∇m(x),

so that τ > 0 means "z helps x" (upweighting z lowers m(x)), the TRAK convention of docs/methods.md §0
(:data:`diffattr.methods.registry.HELPS`). To first order, dropping z's term from the training sum
(weights 1/N of the others unchanged) changes m(x) by τ(x, z)/N. With ``renormalize`` the train
gradient is divided by its norm: Hammoudeh & Lowd's renormalised IF (§2.7), same sign convention.

**Objective.** For diffusion, R(θ) = (1/N) Σ_z (1/D) Σ_{(t,ε)} L_Simple(z, t, ε; θ): the mean over the
training images and over D = ``timesteps`` fixed (t, ε) draws per image. ε and t are pure functions
of (noise seed, split, sample id, t) (:mod:`diffattr.noise`), so the HVPs, the train gradients ∇L(z)
and every minibatch see the same draws (§2.8's recommendation), whatever the batching. ∇m(x) is the
gradient of the mean over the query's own D draws of the output function ``output`` (§1).

**Hessian-vector products.** Reverse-over-reverse (double backward) with :mod:`torch.func`: per
chunk of ``hessian_batch_size`` samples, the pullback of θ ↦ ∇_θ Σ_chunk ℓ is built once and
``vmap``-ped over up to ``hvp_vectors`` vectors (forward-over-reverse ``jvp(grad)`` is not used:
torch's forward-mode group-norm rule fails on diffusers' UNets).

**Solvers** for (H + λI) S = ∇m, all queries at once (rows of a (Q × p) matrix):

- ``exact``: materialise H (p HVPs with the unit vectors), Cholesky of H + λI in float64; refused
  above ``max_exact_params`` parameters.
- ``cg``: conjugate gradient, one independent recursion per query, batched: every iteration costs
  one batched HVP over the still-unconverged queries; stops per query at relative residual
  ‖r‖/‖∇m‖ ≤ ``cg_tolerance``.
- ``lissa``: §2.8's recursion h₀ = v, h_j = v + (1 − d)·h_{j−1} − H_B h_{j−1} / s, s_test = h/s,
  ``lissa_repeats`` independent repeats averaged, H_B the Hessian of a seeded random minibatch of
  ``lissa_batch_size`` samples (None: the full objective). Its fixed point is (H + d·s·I)⁻¹ v, so we
  set d = λ / s and every solver targets the same (H + λI)⁻¹. It converges when
  s > λ_max(H_B) + λ and H + λI ≻ 0; ``lissa_scale = None`` sets s = 2·(ρ(H) + λ) with ρ(H) the
  power-iteration estimate of H's spectral radius.

The N × p train-gradient matrix is never materialised: S (Q × p) is computed once, then per-sample
train gradients are streamed in batches of ``batch_size`` and multiplied (τ[:, batch] = S Gᵀ).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, vjp, vmap

from diffattr.models.ddpm import noisy_draws
from diffattr.models.vmap import NonFiniteGradientError, prepare_for_vmap
from diffattr.methods.registry import ScoreBlocks, ScoreContext, method_settings
from diffattr.noise import gaussian_noise, sample_timesteps
from diffattr.outputs import OUTPUT_FUNCTIONS, output_values

log = logging.getLogger(__name__)

Params = dict[str, torch.Tensor]
BatchLoss = Callable[[Params, tuple[torch.Tensor, ...]], torch.Tensor]
"""(params, batch tensors with leading dim B) → per-sample losses (B,)."""

SOLVERS = ("exact", "cg", "lissa")
TIMESTEP_STRATEGIES = ("uniform", "cumulative", "random")


@dataclass(frozen=True)
class InfluenceConfig:
    """Knobs of the influence-function method (docs/methods.md §2.8); λ = ``damping`` is absolute."""

    solver: str = "cg"
    damping: float = 1e-3
    # conjugate gradient
    cg_iterations: int = 100
    cg_tolerance: float = 1e-5
    # LiSSA
    lissa_depth: int = 1000
    lissa_repeats: int = 1
    lissa_scale: float | None = None
    lissa_batch_size: int | None = 16
    power_iterations: int = 20
    # (t, ε) draws of the training objective and of the query measurements
    timestep_strategy: str = "uniform"
    timesteps: int = 10
    noise_seed: int = 0
    # measurement m(x) of the queries (§1); the training objective is always L_Simple
    output: str = "loss"
    renormalize: bool = False
    # batching, seeds, limits
    hessian_batch_size: int = 16
    hvp_vectors: int = 16
    batch_size: int = 32
    seed: int = 0
    max_exact_params: int = 20_000

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown influence solver {self.solver!r}; choose one of {SOLVERS}")
        if self.output not in OUTPUT_FUNCTIONS:
            raise ValueError(f"unknown output function {self.output!r}; choose one of {OUTPUT_FUNCTIONS}")
        if self.timestep_strategy not in TIMESTEP_STRATEGIES:
            raise ValueError(f"unknown timestep strategy {self.timestep_strategy!r}; choose one of {TIMESTEP_STRATEGIES}")
        if self.damping < 0:
            raise ValueError(f"damping must be ≥ 0, got {self.damping}")
        if self.lissa_scale is not None and self.lissa_scale <= 0:
            raise ValueError(f"lissa_scale must be positive (or null for automatic), got {self.lissa_scale}")
        positive = ("cg_iterations", "lissa_depth", "lissa_repeats", "power_iterations", "timesteps",
                    "hessian_batch_size", "hvp_vectors", "batch_size", "max_exact_params")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.cg_tolerance <= 0:
            raise ValueError(f"cg_tolerance must be positive, got {self.cg_tolerance}")
        if self.lissa_batch_size is not None and self.lissa_batch_size < 1:
            raise ValueError(f"lissa_batch_size must be ≥ 1 or null, got {self.lissa_batch_size}")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> InfluenceConfig:
        """From a config block; unknown keys are an error (``kind`` of a methods entry is ignored)."""
        return cls(**method_settings(cls, cfg, "influence"))


@dataclass(frozen=True)
class Objective:
    """A mean of per-sample losses R(θ) = (1/N) Σ_i ℓ_i(θ), or a set of per-sample measurements.

    ``fetch(rows)`` returns the batch tensors of samples ``rows`` (a pure function of the rows, so
    any batching sees the same data); ``loss(params, batch)`` their per-sample values (B,).
    """

    loss: BatchLoss
    size: int
    fetch: Callable[[np.ndarray], tuple[torch.Tensor, ...]]


def tensor_objective(loss: BatchLoss, *tensors: torch.Tensor) -> Objective:
    """An :class:`Objective` over in-memory tensors sharing their leading dimension."""

    def fetch(rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=tensors[0].device)
        return tuple(t[index] for t in tensors)

    return Objective(loss, len(tensors[0]), fetch)


# ---------------------------------------------------------------------------------------------
# flat parameter vectors


def _flatten(tree: Params, names: list[str], lead: int | None = None) -> torch.Tensor:
    """Concatenate a parameter dict in ``names`` order: (p,), or (lead, p) for batched trees."""
    if lead is None:
        return torch.cat([tree[n].reshape(-1) for n in names])
    return torch.cat([tree[n].reshape(lead, -1) for n in names], dim=1)


def num_params(params: Params) -> int:
    """p, the length of the flat parameter vector."""
    return sum(p.numel() for p in params.values())


# ---------------------------------------------------------------------------------------------
# gradients and Hessian-vector products


def per_sample_gradients(params: Params, objective: Objective, rows: np.ndarray | None = None,
                         batch_size: int = 32) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (rows, (B, p) flat ∇_θ ℓ_i) batch by batch (``functional_call`` losses, ``vmap(grad)``).

    Each row's gradient depends on that row only, never on the batch it is computed in.
    """
    names = list(params)
    rows = np.arange(objective.size) if rows is None else np.asarray(rows)

    def single(p: Params, *one: torch.Tensor) -> torch.Tensor:
        return objective.loss(p, tuple(o.unsqueeze(0) for o in one))[0]

    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = objective.fetch(chunk)
        g = vmap(grad(single), in_dims=(None, *([0] * len(batch))))(params, *batch)
        flat = _flatten(g, names, len(chunk))
        bad = ~torch.isfinite(flat).all(dim=1)
        if bad.any():
            first = int(chunk[int(torch.nonzero(bad)[0])])
            raise NonFiniteGradientError(f"the gradient of sample {first} is not finite (NaN or inf)")
        yield chunk, flat


def stacked_gradients(params: Params, objective: Objective, batch_size: int = 32) -> torch.Tensor:
    """All (n, p) per-sample gradients of a (small) objective, e.g. the queries' ∇m(x)."""
    p = num_params(params)
    device = next(iter(params.values())).device
    out = torch.empty(objective.size, p, device=device)
    for rows, g in per_sample_gradients(params, objective, None, batch_size):
        out[torch.as_tensor(rows, device=device)] = g
    return out


def hessian_vector_products(params: Params, objective: Objective, vectors: torch.Tensor, *,
                            batch_size: int = 16, vector_batch: int = 16,
                            rows: np.ndarray | None = None) -> torch.Tensor:
    """(k, p) rows H_B v of the Hessian of the mean loss over ``rows`` (default: all samples).

    H_B = (1/|B|) Σ_{i∈B} ∇²ℓ_i. Double backward: for each chunk of ``batch_size`` samples the
    pullback of θ ↦ ∇_θ Σ_chunk ℓ_i is built once and ``vmap``-ped over ``vector_batch`` vectors at a
    time; chunks are summed in a fixed order.
    """
    names = list(params)
    rows = np.arange(objective.size) if rows is None else np.asarray(rows)
    out = torch.zeros_like(vectors)
    for start in range(0, len(rows), batch_size):
        batch = objective.fetch(rows[start : start + batch_size])

        def chunk_gradient(p: Params, batch: tuple[torch.Tensor, ...] = batch) -> torch.Tensor:
            return _flatten(grad(lambda q: objective.loss(q, batch).sum())(p), names)

        _, pull = vjp(chunk_gradient, params)
        for v0 in range(0, len(vectors), vector_batch):
            block = vectors[v0 : v0 + vector_batch]
            (hv,) = vmap(pull)(block)
            out[v0 : v0 + len(block)] += _flatten(hv, names, len(block))
    return out / len(rows)


def hessian(params: Params, objective: Objective, batch_size: int = 16, vector_batch: int = 256,
            max_params: int = 20_000) -> torch.Tensor:
    """The full (p × p) Hessian of R, float64, symmetrised, from p HVPs with the unit vectors."""
    p = num_params(params)
    check_exact_size(p, max_params)
    eye = torch.eye(p, device=next(iter(params.values())).device)
    h = hessian_vector_products(params, objective, eye, batch_size=batch_size, vector_batch=vector_batch).double()
    return (h + h.T) / 2


def check_exact_size(p: int, max_params: int) -> None:
    """Refuse to materialise a Hessian with more than ``max_params`` rows."""
    if p > max_params:
        raise ValueError(f"the exact influence solver materialises the p×p Hessian and is limited to "
                         f"max_exact_params = {max_params} parameters, but this model has {p}; "
                         f"use solver 'cg' or 'lissa'")


# ---------------------------------------------------------------------------------------------
# solvers for (H + λI) S = B, one right-hand side per row


def solve_exact(h: torch.Tensor, rhs: torch.Tensor, damping: float) -> torch.Tensor:
    """S = (H + λI)⁻¹ rhs row-wise, float64 Cholesky (LU with a warning if H + λI is not PD)."""
    a = h.double() + damping * torch.eye(len(h), dtype=torch.float64, device=h.device)
    b = rhs.double().T
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, factor).T.to(rhs.dtype)
    log.warning("H + λI (λ = %g) is not positive definite; solving it by LU — the influence of an "
                "indefinite model is not a minimiser's response, consider a larger damping", damping)
    return torch.linalg.solve(a, b).T.to(rhs.dtype)


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, damping: float,
                       iterations: int, tolerance: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve (H + λI) s_q = b_q for every row b_q of ``rhs`` by conjugate gradient.

    ``matvec`` maps (k, p) rows v to H v. Each row runs its own CG recursion (own α, β) and stops
    once ‖r_q‖ ≤ ``tolerance``·‖b_q‖; every iteration makes one batched HVP over the rows still
    running. Returns S and {"iterations", "hvps", "relative_residual" (per row), "converged"}.
    """
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    d = r.clone()
    rr = (r.double() ** 2).sum(dim=1)
    target = tolerance * rr.sqrt()
    active = rr.sqrt() > target
    hvps, it, warned = 0, 0, False
    every = max(1, iterations // 10)
    for it in range(1, iterations + 1):
        idx = torch.nonzero(active).flatten()
        if len(idx) == 0:
            it -= 1
            break
        dk = d[idx]
        ad = matvec(dk) + damping * dk
        hvps += len(idx)
        dad = (dk.double() * ad.double()).sum(dim=1)
        if not warned and bool((dad <= 0).any()):
            log.warning("CG met negative curvature dᵀ(H + λI)d ≤ 0 (λ = %g): H + λI is not positive "
                        "definite; increase the damping", damping)
            warned = True
        alpha = torch.where(dad != 0, rr[idx] / dad, torch.zeros_like(dad))
        x[idx] += alpha.to(x.dtype)[:, None] * dk
        r_new = r[idx] - alpha.to(r.dtype)[:, None] * ad
        rr_new = (r_new.double() ** 2).sum(dim=1)
        beta = rr_new / rr[idx]
        r[idx] = r_new
        d[idx] = r_new + beta.to(d.dtype)[:, None] * dk
        rr[idx] = rr_new
        active[idx] = (rr_new.sqrt() > target[idx]) & (dad != 0)
        if it % every == 0:
            rel = _relative(rr, target, tolerance)
            log.info("CG iteration %d: max relative residual %.2e, %d/%d right-hand sides running",
                     it, float(rel.max()), int(active.sum()), len(rhs))
    rel = _relative(rr, target, tolerance)
    converged = bool((rel <= tolerance).all())
    log.info("CG %s after %d iterations (%d HVPs) for %d right-hand sides: max relative residual %.2e "
             "(tolerance %.1e, λ = %g)", "converged" if converged else "did NOT converge", it, hvps, len(rhs),
             float(rel.max()) if len(rel) else 0.0, tolerance, damping)
    return x, {"iterations": it, "hvps": hvps, "relative_residual": rel.cpu().numpy(), "converged": converged}


def _relative(rr: torch.Tensor, target: torch.Tensor, tolerance: float) -> torch.Tensor:
    """‖r‖ / ‖b‖ per row (0 for a zero right-hand side)."""
    norm_b = target / tolerance
    return torch.where(norm_b > 0, rr.sqrt() / norm_b.clamp_min(1e-300), torch.zeros_like(rr))


def lissa(minibatch_hvp: Callable[[torch.Tensor, int, int], torch.Tensor], rhs: torch.Tensor, damping: float,
          scale: float, depth: int, repeats: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """LiSSA (docs/methods.md §2.8) for all rows v of ``rhs`` at once.

    h₀ = v; h_j = v + (1 − d)·h_{j−1} − H_{B(r,j)} h_{j−1} / s with d = λ/s; s_test = h_depth / s,
    averaged over ``repeats``. ``minibatch_hvp(h, repeat, step)`` returns H_B h for that step's
    minibatch. Fixed point: (H + λI)⁻¹ v. Returns S and {"last_step_change"}: the relative change
    ‖h_depth − h_{depth−1}‖/‖h_depth‖ of the last repeat (≈ 0 when converged, for full-batch HVPs).
    """
    d = damping / scale
    total = torch.zeros_like(rhs)
    change = float("nan")
    for rep in range(repeats):
        h = rhs.clone()
        for step in range(depth):
            h_new = rhs + (1 - d) * h - minibatch_hvp(h, rep, step) / scale
            if not torch.isfinite(h_new).all():
                raise FloatingPointError(f"LiSSA diverged at step {step} of repeat {rep}: the scale s = {scale:g} "
                                         f"must exceed the largest eigenvalue of the minibatch Hessian plus λ, and "
                                         f"H + λI must be positive definite (increase lissa_scale or damping)")
            if step == depth - 1:
                change = float((h_new - h).norm() / h_new.norm().clamp_min(1e-30))
            h = h_new
        total += h / scale
    log.info("LiSSA: %d repeats × depth %d, scale %.3g, damping λ = %g (d = λ/s = %.3g): relative change of the "
             "last step %.2e", repeats, depth, scale, damping, d, change)
    return total / repeats, {"last_step_change": change}


def spectral_radius(matvec: Callable[[torch.Tensor], torch.Tensor], p: int, iterations: int, seed: int,
                    device: torch.device | str = "cpu") -> float:
    """Power-iteration estimate of max |eigenvalue| of H (|Rayleigh quotient| of the last iterate)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, p, generator=g).to(device)
    v /= v.norm()
    value = 0.0
    for _ in range(iterations):
        hv = matvec(v)
        value = float((v * hv).sum())
        norm = hv.norm()
        if norm == 0:
            return 0.0
        v = hv / norm
    return abs(value)


def lissa_minibatch(seed: int, repeat: int, step: int, size: int, batch: int | None) -> np.ndarray | None:
    """Sorted rows of LiSSA's minibatch for (repeat, step), seeded by (seed, repeat, step); None = all."""
    if batch is None or batch >= size:
        return None
    return np.sort(np.random.default_rng([seed, repeat, step]).choice(size, size=batch, replace=False))


def inverse_hvp(params: Params, train: Objective, rhs: torch.Tensor, cfg: InfluenceConfig) -> torch.Tensor:
    """S = (H + λI)⁻¹ rhs row-wise (s_test for every query gradient row), by ``cfg.solver``."""
    p = rhs.shape[1]

    def full_hvp(v: torch.Tensor) -> torch.Tensor:
        return hessian_vector_products(params, train, v, batch_size=cfg.hessian_batch_size,
                                       vector_batch=cfg.hvp_vectors)

    start = time.perf_counter()
    if cfg.solver == "exact":
        check_exact_size(p, cfg.max_exact_params)
        h = hessian(params, train, cfg.hessian_batch_size, max(cfg.hvp_vectors, 256), cfg.max_exact_params)
        s = solve_exact(h, rhs, cfg.damping)
    elif cfg.solver == "cg":
        s, _ = conjugate_gradient(full_hvp, rhs, cfg.damping, cfg.cg_iterations, cfg.cg_tolerance)
    else:
        scale = cfg.lissa_scale
        if scale is None:
            rho = spectral_radius(full_hvp, p, cfg.power_iterations, cfg.seed, rhs.device)
            scale = 2.0 * (rho + cfg.damping)
            log.info("LiSSA scale s = 2·(ρ(H) + λ) = %.4g (power-iteration ρ(H) = %.4g)", scale, rho)
        full = cfg.lissa_batch_size is None or cfg.lissa_batch_size >= train.size
        repeats = 1 if full else cfg.lissa_repeats  # full-batch repeats would be identical

        def minibatch_hvp(v: torch.Tensor, repeat: int, step: int) -> torch.Tensor:
            rows = lissa_minibatch(cfg.seed, repeat, step, train.size, cfg.lissa_batch_size)
            return hessian_vector_products(params, train, v, batch_size=cfg.hessian_batch_size,
                                           vector_batch=cfg.hvp_vectors, rows=rows)

        s, _ = lissa(minibatch_hvp, rhs, cfg.damping, scale, cfg.lissa_depth, repeats)
    log.info("s_test for %d queries by %s in %.1f s (p = %d)", len(rhs), cfg.solver, time.perf_counter() - start, p)
    return s


# ---------------------------------------------------------------------------------------------
# scores


def influence_from_objectives(params: Params, train: Objective, queries: dict[str, Objective],
                              cfg: InfluenceConfig) -> dict[str, np.ndarray]:
    """τ(x, z) = ∇m(x)ᵀ (H + λI)⁻¹ ∇ℓ_z per query set: (n_queries × n_train) float32, > 0 = z helps x.

    H is the Hessian of ``train`` (the mean of its per-sample losses ℓ_z) at ``params``; ∇m(x) the
    per-sample gradients of each query objective. All query sets are solved together; train
    gradients are streamed in batches of ``cfg.batch_size`` (never stacked). With
    ``cfg.renormalize`` each ∇ℓ_z is divided by its norm (docs/methods.md §2.7).
    """
    p = num_params(params)
    if cfg.solver == "exact":
        check_exact_size(p, cfg.max_exact_params)
    names = list(queries)
    grads = [stacked_gradients(params, queries[n], cfg.batch_size) for n in names]
    sizes = [len(g) for g in grads]
    s = inverse_hvp(params, train, torch.cat(grads), cfg)
    scores = torch.empty(len(s), train.size, dtype=torch.float64, device=s.device)
    start = time.perf_counter()
    for rows, g in per_sample_gradients(params, train, None, cfg.batch_size):
        block = s.double() @ g.double().T
        if cfg.renormalize:
            block /= g.double().norm(dim=1).clamp_min(1e-30)[None, :]
        scores[:, torch.as_tensor(rows, device=s.device)] = block
    log.info("streamed %d train gradients in %.1f s", train.size, time.perf_counter() - start)
    out = torch.split(scores.float().cpu(), sizes)
    return {n: o.numpy() for n, o in zip(names, out)}


def diffusion_objective(model: torch.nn.Module, scheduler: Any, images: np.ndarray, split: str,
                        cfg: InfluenceConfig, output: str = "loss", sample_ids: np.ndarray | None = None,
                        device: str | torch.device = "cpu") -> Objective:
    """Per-sample (1/D) Σ_{(t,ε)} F(x, t, ε; θ) over D = ``cfg.timesteps`` draws (docs/methods.md §0, §1).

    Batch tensors: x₀ (B, C, H, W), t (B, D), ε (B, D, C, H, W); t and ε are pure functions of
    (``cfg.noise_seed``, ``split``, sample id, t), as in :func:`diffattr.featurize.featurize`.
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    ids = np.arange(len(images)) if sample_ids is None else np.asarray(sample_ids, dtype=np.int64)
    abar = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    betas = scheduler.betas.to(device=device, dtype=torch.float32)
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    shape = images.shape[1:]

    def fetch(rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        rows = np.asarray(rows, dtype=np.int64)
        ts = sample_timesteps(cfg.timestep_strategy, cfg.timesteps, len(abar), cfg.noise_seed, split, ids[rows])
        eps = gaussian_noise(cfg.noise_seed, split, ids[rows], ts, shape)
        return (torch.from_numpy(images[rows]).to(device), torch.from_numpy(ts).to(device),
                torch.from_numpy(eps).to(device))

    def loss(params: Params, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x0, t, eps = batch
        x_t, tt, ee = noisy_draws(x0, t, eps, abar)
        pred = functional_call(model, (params, buffers), (x_t, tt)).sample
        return output_values(output, pred, ee, tt, betas, abar).reshape(t.shape).mean(dim=1)

    return Objective(loss, len(images), fetch)


def influence_scores(model: torch.nn.Module, scheduler: Any, train_images: np.ndarray,
                     queries: dict[str, np.ndarray], cfg: InfluenceConfig, device: str = "cpu",
                     train_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Influence scores of a diffusion model, per query set an (n_queries × n_train) float32 matrix.

    τ(x, z) = ∇m(x)ᵀ (H + λI)⁻¹ ∇L(z) (docs/methods.md §2.8, minus Koh & Liang's IF: > 0 = z helps x),
    H the Hessian of the training objective R (L_Simple averaged over the images and their fixed
    (t, ε) draws), L(z) z's own term of R, m(x) the mean of ``cfg.output`` over x's draws. Images
    are float (n, C, H, W) in [−1, 1]; draws are seeded by split ("train", or the query set's name)
    and row index (or ``train_ids``). ``cfg.renormalize`` gives §2.7's renormalised IF.
    """
    model = prepare_for_vmap(model.to(device))
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if cfg.solver == "exact":
        check_exact_size(num_params(params), cfg.max_exact_params)
    train = diffusion_objective(model, scheduler, train_images, "train", cfg, "loss", train_ids, device)
    query_objectives = {name: diffusion_objective(model, scheduler, images, name, cfg, cfg.output, None, device)
                        for name, images in queries.items()}
    log.info("influence (%s, λ = %g) of %d train images on %s queries, p = %d, %d (t, ε) draws per image",
             cfg.solver, cfg.damping, len(train_images), {n: len(q) for n, q in queries.items()},
             num_params(params), cfg.timesteps)
    return influence_from_objectives(params, train, query_objectives, cfg)


def influence_method_scores(ctx: ScoreContext) -> ScoreBlocks:
    """Registry scorer: influence of the full model's training images on one attributed set.
    Inputs ``checkpoint``, ``data`` (and ``generated``); settings: the :class:`InfluenceConfig`
    fields; the model's ``unet`` / ``scheduler``."""
    from diffattr.data.store import read_images, to_model_range
    from diffattr.jobs import device
    from diffattr.methods.similarity import query_images
    from diffattr.models.ddpm import build_scheduler, load_unet

    cfg, query_set = InfluenceConfig.from_dict(ctx.settings), ctx.query_set
    model = load_unet(ctx.inputs.checkpoint, ctx.model["unet"], device())
    train = to_model_range(read_images(ctx.inputs.data, "train"))
    queries = {query_set: to_model_range(query_images(ctx.inputs, query_set))}
    scores = influence_scores(model, build_scheduler(ctx.model["scheduler"]), train, queries, cfg, device())[query_set]
    return ScoreBlocks.from_matrix(scores, {"solver": cfg.solver, "damping": cfg.damping})
