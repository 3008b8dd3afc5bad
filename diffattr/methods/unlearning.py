"""Attribution by Unlearning (Wang et al., NeurIPS 2024; docs/methods.md §2.17).

Unlearn the attributed (synthesized) image x̂ from the trained model with one Fisher-preconditioned
gradient-ascent step, then score every training image z by how much the model forgot it.

**1. Fisher.** The diagonal empirical Fisher of L_Simple over the N training images,

    F_diag = (1/(N·P)) Σ_{p<P} Σ_z (∇_θ ℓ(z, t_{z,p}, ε_{z,p}))²,

from *per-sample* gradients (``torch.func`` ``vmap(grad)``, never the square of a batch gradient),
P = ``fisher_passes`` passes over the training set (§2.17: 5 epochs, one random t per sample and
pass). t_{z,p} is column p of a seeded permutation of {0..T−1} per sample (so a sample's passes see
distinct timesteps) and ε_{z,p} = ``gaussian_noise(seed, "fisher", z, t_{z,p})``: pure functions
of (``seed``, pass, sample index), independent of ``fisher_batch_size`` (docs/methods.md §7.2).

**2. Unlearning step.** One step of gradient *ascent* on x̂, preconditioned by the Fisher,

    θ' = θ + η · g / ((F_diag + ε_F) · N · M),   g = Σ_{m<M} ∇_θ (1/C) Σ_{c<C} ℓ(x̂, t_{m,c}, ε_{m,c}),

over M = ``micro_batches`` micro-batches of C = ``query_copies`` copies of x̂ (§2.17: M = 625,
C = 80, η = 0.01; each micro-batch's loss is its mean, as in a ``mse_loss`` minibatch). Within a
micro-batch the timesteps are distinct (the first C entries of a permutation of {0..T−1} seeded by
(``seed``, m), the reference code's ``randperm``) and ε_{m,c} = ``gaussian_noise(seed, "unlearn",
m, t_{m,c})``; every query sees the same draws. ε_F = ``fisher_damping`` (our addition, not in
§2.17) keeps the division finite where a parameter has zero Fisher. Only the parameters whose names
contain one of the substrings ``params`` are updated (in Stable Diffusion the cross-attention K/V,
``attn2.to_k`` / ``attn2.to_v``; for an unconditional DDPM, which has none, the default ``()``
updates every parameter).

**3. Score.** score(x̂, z) = L̄(z; θ') − L̄(z; θ), L̄ the L_Simple of z averaged over the ground
truth's fixed (noise seed, t) pairs (:func:`diffattr.measure.measure_losses`: θ and θ' see
identical draws; §2.17's fixed noise per batch) — or, with ``timesteps`` = K, over K uniformly spaced
timesteps with one noise seed ``seed`` (§2.17: 20 timesteps, 0, 50, …, 950), which costs K/P of it. With ``hflip_max`` the score is also computed on
the horizontally flipped z and the larger of the two is kept (§2.17). Rank by decreasing score:
the training image the unlearned model forgot most is the most responsible for x̂.

**Sign.** A larger score means z is more responsible for ("helps") x̂, so in the LDS convention of
:mod:`diffattr.methods.registry` the method's sign is ``HELPS`` (−1), like TRAK's.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from diffattr.measure import measure_losses
from diffattr.methods.registry import ScoreBlocks, ScoreContext, method_settings
from diffattr.models.ddpm import add_noise
from diffattr.models.family import condition_kwargs, denoise
from diffattr.models.vmap import NonFiniteGradientError, prepare_for_vmap
from diffattr.noise import gaussian_noise, split_code
from diffattr.outputs import l_simple
from diffattr.progress import progress

log = logging.getLogger(__name__)

Params = dict[str, torch.Tensor]

FISHER_SPLIT = "fisher"
"""Noise stream of the Fisher's training-sample draws (distinct from the ground truth's ``train``)."""
QUERY_SPLIT = "unlearn"
"""Noise stream of the unlearning step's draws on copies of x̂ (sample id = micro-batch index)."""


@dataclass(frozen=True)
class UnlearningConfig:
    """Knobs of attribution by unlearning (docs/methods.md §2.17); defaults are §2.17's where it has one."""

    eta: float = 0.01
    fisher_passes: int = 5
    fisher_batch_size: int = 32
    fisher_damping: float = 1e-8
    query_copies: int = 80
    micro_batches: int = 625
    params: tuple[str, ...] = ()
    seed: int = 0
    hflip_max: bool = False
    batch_size: int = 64
    timesteps: int | None = None

    def __post_init__(self) -> None:
        if not self.eta > 0:
            raise ValueError(f"eta must be positive (the unlearning step is an ascent), got {self.eta}")
        if self.fisher_damping < 0:
            raise ValueError(f"fisher_damping must be ≥ 0, got {self.fisher_damping}")
        for name in ("fisher_passes", "fisher_batch_size", "query_copies", "micro_batches", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be ≥ 0, got {self.seed}")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> UnlearningConfig:
        """From a config block; unknown keys are an error (``kind`` of a methods entry is ignored)."""
        cfg = method_settings(cls, cfg, "unlearning")
        if "params" in cfg:
            cfg["params"] = (cfg["params"],) if isinstance(cfg["params"], str) else tuple(cfg["params"])
        return cls(**cfg)


def selected_names(model: torch.nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the parameters updated by the unlearning step: the trainable ones (every DDPM weight, or
    a LoRA adapter's) containing any of ``patterns`` (all of them when empty), in ``named_parameters``
    order."""
    names = [n for n, p in model.named_parameters()
             if p.requires_grad and (not patterns or any(s in n for s in patterns))]
    if not names:
        raise ValueError(f"no trainable parameter name contains any of {list(patterns)}")
    return names


def distinct_timesteps(seed: int, split: str, key: int, count: int, num_train_timesteps: int) -> np.ndarray:
    """The first ``count`` entries of a permutation of {0..T−1} seeded by (seed, split, key): ``count``
    distinct timesteps, a pure function of those integers."""
    if count > num_train_timesteps:
        raise ValueError(f"cannot draw {count} distinct timesteps out of {num_train_timesteps}")
    rng = np.random.default_rng([seed, split_code(split), key])
    return rng.permutation(num_train_timesteps)[:count].astype(np.int64)


def fisher_draws(seed: int, sample_ids: np.ndarray, passes: int, num_train_timesteps: int,
                 shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(t (n, passes), ε (n, passes, *shape)) of the Fisher: sample i's pass p draws t[i, p] (distinct
    over passes) and ε = ``gaussian_noise(seed, "fisher", i, t[i, p])``."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    ts = np.stack([distinct_timesteps(seed, FISHER_SPLIT, int(i), passes, num_train_timesteps) for i in ids])
    ts = ts.reshape(len(ids), passes)
    return ts, gaussian_noise(seed, FISHER_SPLIT, ids, ts, shape)


def query_draws(seed: int, micro_batch: int, copies: int, num_train_timesteps: int,
                shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(t (C,), ε (C, *shape)) of micro-batch m of the unlearning step: distinct timesteps and
    ε = ``gaussian_noise(seed, "unlearn", m, t)``."""
    ts = distinct_timesteps(seed, QUERY_SPLIT, micro_batch, copies, num_train_timesteps)
    return ts, gaussian_noise(seed, QUERY_SPLIT, [micro_batch], ts[None], shape)[0]


def fisher_diagonal(model: torch.nn.Module, images: np.ndarray, cfg: UnlearningConfig, abar: torch.Tensor,
                    device: str = "cpu", cond: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """F_diag per selected parameter (name → tensor of its shape, float32, on ``device``): the mean over
    the N training inputs (float (N, C, H, W): pixels in [−1, 1] or latents, conditions ``cond``) and
    ``cfg.fisher_passes`` passes of the squared per-sample gradient of L_Simple (step 1 of the module
    docstring). ``model`` is not modified (a copy is made ready for ``vmap``)."""
    work = prepare_for_vmap(copy.deepcopy(model).to(device))
    names = selected_names(work, cfg.params)
    everything = {n: p.detach() for n, p in work.named_parameters()}
    selected = {n: everything[n] for n in names}
    buffers = {n: b.detach() for n, b in work.named_buffers()}
    abar = abar.to(device=device, dtype=torch.float32)
    images = np.ascontiguousarray(images, dtype=np.float32)

    def sample_loss(sel: Params, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                    c: torch.Tensor | None) -> torch.Tensor:
        x_t = add_noise(x[None], eps[None], t[None], abar)
        kwargs = condition_kwargs(None if c is None else c[None])
        pred = functional_call(work, ({**everything, **sel}, buffers), (x_t, t[None]), kwargs).sample
        return l_simple(pred, eps[None])[0]

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0, None if cond is None else 0))
    labels = None if cond is None else torch.from_numpy(np.asarray(cond)).to(device)
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in selected.items()}
    start_time = time.perf_counter()
    for start in range(0, len(images), cfg.fisher_batch_size):
        rows = np.arange(start, min(start + cfg.fisher_batch_size, len(images)))
        ts, eps = fisher_draws(cfg.seed, rows, cfg.fisher_passes, len(abar), images.shape[1:])
        x0 = torch.from_numpy(images[rows]).to(device)
        for p in range(cfg.fisher_passes):
            t, e = torch.from_numpy(ts[:, p]).to(device), torch.from_numpy(eps[:, p]).to(device)
            g = per_sample(selected, x0, t, e, None if labels is None else labels[rows])
            for n in names:
                if not torch.isfinite(g[n]).all():
                    raise NonFiniteGradientError(f"a Fisher gradient of train rows {rows[0]}–{rows[-1]} "
                                                 f"is not finite (NaN or inf)")
                total[n] += (g[n].double() ** 2).sum(dim=0)
    count = len(images) * cfg.fisher_passes
    log.info("Fisher diagonal of %d parameters from %d × %d per-sample gradients in %.1f s",
             sum(p.numel() for p in selected.values()), len(images), cfg.fisher_passes,
             time.perf_counter() - start_time)
    return {n: (v / count).float() for n, v in total.items()}


def query_gradient(model: torch.nn.Module, query_image: np.ndarray | torch.Tensor, names: list[str],
                   cfg: UnlearningConfig, abar: torch.Tensor, device: str = "cpu",
                   query_cond: int | None = None) -> dict[str, torch.Tensor]:
    """g = Σ_{m<M} ∇_θ mean_c ℓ(x̂, t_{m,c}, ε_{m,c}) for the parameters ``names`` (float64); x̂ is
    conditioned on ``query_cond`` (its caption index) when given."""
    x = torch.as_tensor(np.asarray(query_image, dtype=np.float32), device=device)
    abar = abar.to(device=device, dtype=torch.float32)
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in chosen]
    x0 = x[None].expand(cfg.query_copies, *x.shape)
    labels = None if query_cond is None else torch.full((cfg.query_copies,), int(query_cond), device=device)
    for m in range(cfg.micro_batches):
        ts, eps = query_draws(cfg.seed, m, cfg.query_copies, len(abar), tuple(x.shape))
        t = torch.from_numpy(ts).to(device)
        e = torch.from_numpy(eps).to(device)
        loss = l_simple(denoise(model, add_noise(x0, e, t, abar), t, labels), e).mean()
        for acc, g in zip(total, torch.autograd.grad(loss, chosen)):
            acc += g.double()
    return dict(zip(names, total))


def unlearning_step(model: torch.nn.Module, query_image: np.ndarray | torch.Tensor, fisher: dict[str, torch.Tensor],
                    n_train: int, cfg: UnlearningConfig, abar: torch.Tensor, device: str = "cpu",
                    query_cond: int | None = None) -> torch.nn.Module:
    """θ' = θ + η · g / ((F_diag + ε_F) · N · M) on the parameters of ``fisher`` (step 2 of the module
    docstring), as a new model in eval mode; ``model`` is not modified. ``query_image`` is x̂, float
    (C, H, W) in [−1, 1]; ``fisher`` comes from :func:`fisher_diagonal` with the same ``cfg.params``."""
    names = selected_names(model, cfg.params)
    if sorted(names) != sorted(fisher):
        raise ValueError("the Fisher was computed for other parameters than cfg.params selects")
    unlearned = copy.deepcopy(model).to(device).eval()
    g = query_gradient(unlearned, query_image, names, cfg, abar, device, query_cond)
    params = dict(unlearned.named_parameters())
    with torch.no_grad():
        for n in names:
            denominator = (fisher[n].to(device).double() + cfg.fisher_damping) * n_train * cfg.micro_batches
            if not bool((denominator > 0).all()):
                raise ValueError(f"parameter {n} has zero Fisher entries; set fisher_damping > 0")
            params[n] += (cfg.eta * g[n] / denominator).to(params[n].dtype)
    return unlearned


def mean_losses(model: torch.nn.Module, images: np.ndarray, pairs: np.ndarray, abar: torch.Tensor,
                cfg: UnlearningConfig, device: str = "cpu", cond: np.ndarray | None = None) -> np.ndarray:
    """L̄(z; θ) (float64, (n,)) over the (noise seed, t) ``pairs`` of the ground truth; with
    ``cfg.hflip_max``, (2, n): the images, then their horizontal flips (same draws by row)."""
    views = [images, images[..., ::-1].copy()] if cfg.hflip_max else [images]
    out = [measure_losses(model, v, "train", pairs, abar, cfg.batch_size, device, cond).astype(np.float64).mean(axis=0)
           for v in views]
    return np.stack(out) if cfg.hflip_max else out[0]


def unlearning_scores(model: torch.nn.Module, query_images: np.ndarray, train_images: np.ndarray,
                      cfg: UnlearningConfig, gt_pairs: np.ndarray, abar: torch.Tensor, device: str = "cpu",
                      fisher: dict[str, torch.Tensor] | None = None, query_cond: np.ndarray | None = None,
                      train_cond: np.ndarray | None = None) -> np.ndarray:
    """(n_queries, n_train) float32 scores L̄(z; θ'_x̂) − L̄(z; θ) (max over flips with
    ``cfg.hflip_max``): larger = z more responsible for x̂ (sign ``HELPS``). Images are float
    (n, C, H, W) in [−1, 1]; ``gt_pairs`` the ground truth's (noise seed, t) pairs; ``fisher`` a
    precomputed :func:`fisher_diagonal` (computed here, once, when None); ``query_cond`` and
    ``train_cond`` the samples' conditions (a text-to-image model's caption indices; None:
    unconditional)."""
    base = copy.deepcopy(model).to(device).eval()
    train_images = np.ascontiguousarray(train_images, dtype=np.float32)
    if fisher is None:
        fisher = fisher_diagonal(base, train_images, cfg, abar, device, train_cond)
    before = mean_losses(base, train_images, gt_pairs, abar, cfg, device, train_cond)
    scores = np.empty((len(query_images), len(train_images)), dtype=np.float32)
    start_time = time.perf_counter()
    with progress(len(query_images), "unlearn", "query") as bar:
        for q, query in enumerate(np.asarray(query_images, dtype=np.float32)):
            unlearned = unlearning_step(base, query, fisher, len(train_images), cfg, abar, device,
                                        None if query_cond is None else int(query_cond[q]))
            change = mean_losses(unlearned, train_images, gt_pairs, abar, cfg, device, train_cond) - before
            scores[q] = change.max(axis=0) if cfg.hflip_max else change
            bar.update(1)
    log.info("unlearning scores of %d queries × %d train images in %.1f s (η = %g, %d × %d query draws)",
             len(query_images), len(train_images), time.perf_counter() - start_time, cfg.eta, cfg.micro_batches,
             cfg.query_copies)
    return scores


def unlearning_method_scores(ctx: ScoreContext) -> ScoreBlocks:
    """Registry scorer (sign ``HELPS``): unlearning scores of the full model's training images for one
    attributed set. Inputs ``checkpoint``, ``data`` (and ``generated``); settings: the
    :class:`UnlearningConfig` fields; the model's params (:mod:`diffattr.models.family`) and the
    ground truth's (seed, t) pairs of L̄."""
    from diffattr.ground_truth import GroundTruthConfig
    from diffattr.jobs import device
    from diffattr.models.ddpm import alphas_cumprod
    from diffattr.models.family import load_model

    if ctx.ground_truth is None:
        raise ValueError("the unlearning scorer needs the ground truth's (seed, t) pairs of L̄")
    cfg, inputs, query_set = UnlearningConfig.from_dict(ctx.settings), ctx.inputs, ctx.query_set
    where = device()
    abar = alphas_cumprod(ctx.model["scheduler"])
    truth = ctx.ground_truth if cfg.timesteps is None else {"timesteps": cfg.timesteps, "noise_seeds": [cfg.seed]}
    pairs = GroundTruthConfig.from_dict(truth).pairs(len(abar))
    model = load_model(inputs.checkpoint, ctx.model, where)
    if cfg.hflip_max and model.components is not None:
        raise ValueError("hflip_max flips the network's inputs, which are latents for the text_to_image family; "
                         "set it to false")
    train, train_cond = model.inputs(inputs.data, "train")
    queries, query_cond = model.inputs(inputs.images(query_set), query_set)
    scores = unlearning_scores(model.network, queries, train, cfg, pairs, abar, where, None, query_cond, train_cond)
    return ScoreBlocks.from_matrix(scores, {"eta": cfg.eta, "micro_batches": cfg.micro_batches,
                                            "query_copies": cfg.query_copies, "fisher_passes": cfg.fisher_passes,
                                            "hflip_max": cfg.hflip_max})
