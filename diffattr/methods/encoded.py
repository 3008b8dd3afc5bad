"""Encoded ensembles (Dai & Gifford), docs/methods.md §2.18.

**Split design.** E models, E even. Training point i gets a distinct balanced code c(i) ∈ {0,1}^E
with E/2 ones (:func:`diffattr.subsets.balanced_codes`); member m trains on {i : c_m(i) = 1}. So for every i, exactly
E/2 members never saw z_i: their mean is the ensemble *without* z_i, at no retraining cost.

**Loss attribution** (the registry scorer, LDS units). With the full-ensemble prediction
ε̄(x_t, t) = (1/E) Σ_m ε_m(x_t, t) and the complement of i, ε̄_{−i} = (2/E) Σ_{m: c_m(i)=0} ε_m(x_t, t),

    τ(x, z_i) = mean over the ground truth's (noise seed, t) pairs of
                L_Simple(ε̄; x, t, ε) − L_Simple(ε̄_{−i}; x, t, ε),

with L_Simple = mean over pixels of (prediction − ε)² (docs/methods.md §0) and exactly the ground truth's
draws of ε and t (§4.3, :func:`diffattr.measure.measure_losses`). τ > 0 means including z_i raises
the loss at x: the sign ``LOSS_UNITS`` of :mod:`diffattr.methods.registry`. Writing a_i ∈ R^E for
the complement weights (2/E)·[c_m(i) = 0] and P ∈ R^{E×D} for one sample's member predictions, the
complement loss is (a_iᵀ(PPᵀ)a_i − 2 a_iᵀ(Pε) + ‖ε‖²)/D, so no N × D tensor is ever formed.

**Generated images.** Deterministic DDPM ancestral sampling from a fixed exogenous noise tensor with
the ε prediction Σ_m w_m ε_m (w = 1/E: the full ensemble) (:func:`ensemble_sample`). The exact
counterfactual of z_i samples again with w = a_i and the same noise (:func:`counterfactual_sample`).
Linearised version: J_m = ∂x₀/∂w_m at w = 1/E by forward-mode AD and
Δx(i) ≈ Σ_m (w'_m − 1/E)·J_m, w' = a_i (:func:`linearised_counterfactual`); this linearisation is
the spec author's derivation, UNVERIFIED against the paper (docs/methods.md §2.18).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffattr.measure import ground_truth_draws
from diffattr.methods.registry import ScoreBlocks, ScoreContext
from diffattr.models.ddpm import alphas_cumprod

# ------------------------------------------------------------------------------------------ codes


def check_codes(codes: np.ndarray, members: int) -> None:
    """Raise unless ``codes`` (N, E) is a balanced code design for ``members`` = E models: E even and
    every training point in exactly E/2 members."""
    if codes.ndim != 2 or codes.shape[1] != members:
        raise ValueError(f"codes of shape {codes.shape} do not have one column per member of the {members} models")
    if members < 2 or members % 2:
        raise ValueError(f"an encoded ensemble needs an even number of models (at least 2), not {members}")
    bad = int((codes.sum(axis=1) != members // 2).sum())
    if bad:
        raise ValueError(f"{bad} training points are not in exactly {members // 2} of the {members} members, "
                         "so the masks are not a balanced code design (docs/methods.md §2.18)")


def complement_weights(codes: np.ndarray, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N, E) weights a_i = (2/E)·[c_m(i) = 0] of the ensemble without training point i."""
    codes = np.asarray(codes, dtype=bool)
    check_codes(codes, codes.shape[-1])
    return torch.as_tensor(~codes, dtype=dtype, device=device) * (2.0 / codes.shape[1])


# ----------------------------------------------------------------------------------------- losses


def full_losses(preds: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """(B,) float64 L_Simple of the full ensemble: mean over D of ((1/E) Σ_m preds[m] − ε)²,
    ``preds`` (E, B, D), ``eps`` (B, D)."""
    return ((preds.to(torch.float64).mean(dim=0) - eps.to(torch.float64)) ** 2).mean(dim=1)


def pair_weights(weights: torch.Tensor) -> torch.Tensor:
    """(N, E²) products a_im·a_in of the complement weights (:func:`complement_weights`)."""
    return (weights[:, :, None] * weights[:, None, :]).reshape(len(weights), -1)


def complement_losses(preds: torch.Tensor, eps: torch.Tensor, codes: np.ndarray,
                      weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(B, N) float64 L_Simple of each training point's complement ensemble, pred_i = Σ_m a_im preds[m]:
    (a_iᵀ(P_b P_bᵀ)a_i − 2 a_iᵀ(P_b ε_b) + ‖ε_b‖²)/D with P_b = preds[:, b, :] (E × D), ``eps`` (B, D).
    ``weights``: (a, :func:`pair_weights` of a) when already formed from ``codes``. Memory
    O(E·B·D + N·E² + B·N)."""
    e, b, d = preds.shape
    p = preds.to(torch.float64)
    target = eps.to(torch.float64)
    if weights is None:
        a = complement_weights(codes, p.device)
        weights = (a, pair_weights(a))
    a, pairs = weights
    if a.shape[1] != e:
        raise ValueError(f"codes have {a.shape[1]} members but preds come from {e} models")
    gram = torch.einsum("ebd,fbd->bef", p, p).reshape(b, e * e)
    cross = torch.einsum("ebd,bd->be", p, target)
    square = (target**2).sum(dim=1, keepdim=True)
    return (gram @ pairs.T - 2 * cross @ a.T + square) / d


def member_predictions(models: Sequence[torch.nn.Module], x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(E, B, D): every member's ε prediction at (x_t, t), flattened over pixels."""
    return torch.stack([model(x_t, t).sample.reshape(len(x_t), -1) for model in models])


@torch.no_grad()
def encoded_influence(
    models: Sequence[torch.nn.Module],
    images: np.ndarray,
    split: str,
    pairs: np.ndarray,
    abar: torch.Tensor,
    codes: np.ndarray,
    batch_size: int,
    device: str = "cpu",
) -> np.ndarray:
    """(Q, N) float64 τ(x, z_i) = mean over (seed, t) ``pairs`` of L(x; full) − L(x; complement of i).

    ``images`` float (Q, C, H, W) in [−1, 1]; x_t and ε are the ground truth's draws
    (:func:`diffattr.measure.ground_truth_draws`), so the losses are those
    :func:`diffattr.measure.measure_losses` measures. Every member runs on the same x_t; the
    complement weights are formed once.
    """
    check_codes(np.asarray(codes, dtype=bool), len(models))
    a = complement_weights(codes, device)
    weights = (a, pair_weights(a))
    out = np.zeros((len(images), len(codes)), dtype=np.float64)
    for _, rows, x_t, eps, tt in ground_truth_draws(images, split, pairs, abar, batch_size, device):
        preds = member_predictions(models, x_t, tt)
        flat = eps.reshape(len(eps), -1)
        out[rows] += (full_losses(preds, flat)[:, None] - complement_losses(preds, flat, codes, weights)).cpu().numpy()
    return out / len(pairs)


# --------------------------------------------------------------------------------------- sampling


def sampling_timesteps(num_train_timesteps: int, timesteps: int | None = None) -> np.ndarray:
    """Ascending t_0 < … < t_{S−1}: all T steps (``None``) or S = ``timesteps`` steps
    t_s = s·⌊T/S⌋ (diffusers' "leading" spacing), so t_0 = 0."""
    steps = num_train_timesteps if timesteps is None else timesteps
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"cannot sample with {steps} steps out of T = {num_train_timesteps}")
    return np.arange(steps, dtype=np.int64) * (num_train_timesteps // steps)


def ensemble_prediction(models: Sequence[torch.nn.Module], weights: torch.Tensor, x_t: torch.Tensor,
                        t: int) -> torch.Tensor:
    """ε̂(x_t, t) = Σ_m weights[m]·ε_m(x_t, t)."""
    tt = torch.full((len(x_t),), t, dtype=torch.long, device=x_t.device)
    return torch.tensordot(weights, member_predictions(models, x_t, tt), dims=1).reshape(x_t.shape)


def ensemble_sample(
    models: Sequence[torch.nn.Module],
    weights: torch.Tensor,
    noise: torch.Tensor,
    scheduler_config: dict[str, Any],
    device: str = "cpu",
    timesteps: int | None = None,
) -> torch.Tensor:
    """x₀ (B, C, H, W) of deterministic DDPM ancestral sampling with ε̂ = Σ_m w_m ε_m (docs/methods.md §2.18).

    Steps t_{S−1} > … > t_0 = 0 from :func:`sampling_timesteps` (S = T by default). With ᾱ' = ᾱ at
    the chosen steps and ᾱ_{t_{−1}} = 1 (respacing: β'_s = 1 − ᾱ_{t_s}/ᾱ_{t_{s−1}}), step s maps
    x_{t_s} to

        x̂₀ = clip((x − sqrt(1−ᾱ_{t_s})·ε̂) / sqrt(ᾱ_{t_s}), −1, 1),
        μ  = sqrt(ᾱ_{t_{s−1}})·β'_s/(1−ᾱ_{t_s})·x̂₀ + sqrt(1−β'_s)·(1−ᾱ_{t_{s−1}})/(1−ᾱ_{t_s})·x,
        x' = μ + sqrt(β̃_s)·z,  β̃_s = β'_s·(1−ᾱ_{t_{s−1}})/(1−ᾱ_{t_s})  (no noise at t_0 = 0),

    which is diffusers' ``DDPMScheduler.step`` (``fixed_small`` variance, ``clip_sample``). The
    exogenous ``noise`` is (S+1, B, C, H, W): noise[0] is x_T and noise[k] the z of the k-th step
    taken (k = 1..S; noise[S], for t_0 = 0, is unused). The result is a pure function of
    (``weights``, ``noise``) that ``torch.func`` can differentiate in ``weights``; run it under
    ``torch.no_grad()`` unless back-propagating, or autograd keeps every step's activations.
    """
    abar = alphas_cumprod(scheduler_config).tolist()  # Python floats: no numpy under torch.func transforms
    steps = sampling_timesteps(len(abar), timesteps)
    if noise.shape[0] != len(steps) + 1:
        raise ValueError(f"noise has {noise.shape[0]} slices but {len(steps)} sampling steps need {len(steps) + 1}")
    noise = noise.to(device)
    weights = weights.to(device=device, dtype=noise.dtype)
    x = noise[0]
    for k, s in enumerate(range(len(steps) - 1, -1, -1), start=1):
        a_t = abar[steps[s]]
        a_prev = abar[steps[s - 1]] if s > 0 else 1.0
        beta = 1.0 - a_t / a_prev
        eps_hat = ensemble_prediction(models, weights, x, int(steps[s]))
        x0_hat = ((x - math.sqrt(1.0 - a_t) * eps_hat) / math.sqrt(a_t)).clamp(-1.0, 1.0)
        x0_coef = math.sqrt(a_prev) * beta / (1.0 - a_t)
        x = x0_coef * x0_hat + (math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)) * x
        if s > 0:
            x = x + math.sqrt(beta * (1.0 - a_prev) / (1.0 - a_t)) * noise[k]
    return x


@torch.no_grad()
def counterfactual_sample(
    models: Sequence[torch.nn.Module],
    code: np.ndarray,
    noise: torch.Tensor,
    scheduler_config: dict[str, Any],
    device: str = "cpu",
    timesteps: int | None = None,
) -> torch.Tensor:
    """The exact counterfactual of a training point with code c: :func:`ensemble_sample` with the
    E/2 members where c_m = 0, weights a = (2/E)·[c_m = 0], on the same ``noise``."""
    weights = complement_weights(np.asarray(code)[None], device, noise.dtype)[0]
    return ensemble_sample(models, weights, noise, scheduler_config, device, timesteps)


def _contiguous_input(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


@contextlib.contextmanager
def forward_ad_ready(models: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Let forward-mode AD through diffusers UNets: the math attention kernel (the fused ones have no
    forward-AD formula) and contiguous GroupNorm inputs (group_norm's forward-AD formula cannot view
    the strided output of an attention block); both undone on exit."""
    handles = [module.register_forward_pre_hook(_contiguous_input)
               for model in models for module in model.modules() if isinstance(module, torch.nn.GroupNorm)]
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for handle in handles:
            handle.remove()


def ensemble_jacobian(
    models: Sequence[torch.nn.Module],
    noise: torch.Tensor,
    scheduler_config: dict[str, Any],
    device: str = "cpu",
    timesteps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x₀ of the full ensemble (B, C, H, W), J (E, B, C, H, W)) with J_m = ∂x₀/∂w_m at w = 1/E,
    one forward-mode ``torch.func.jvp`` of :func:`ensemble_sample` per member (docs/methods.md §2.18)."""
    e = len(models)
    w = torch.full((e,), 1.0 / e, dtype=noise.dtype, device=device)
    basis = torch.eye(e, dtype=noise.dtype, device=device)

    def sample(weights: torch.Tensor) -> torch.Tensor:
        return ensemble_sample(models, weights, noise, scheduler_config, device, timesteps)

    with torch.no_grad(), forward_ad_ready(models):
        results = [jvp(sample, (w,), (basis[m],)) for m in range(e)]
    return results[0][0], torch.stack([tangent for _, tangent in results])


def linearised_counterfactual(
    models: Sequence[torch.nn.Module],
    codes: np.ndarray,
    noise: torch.Tensor,
    scheduler_config: dict[str, Any],
    device: str = "cpu",
    timesteps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x₀ (B, C, H, W), Δx (N, B, C, H, W)) with Δx(i) = Σ_m (w'_m − 1/E)·J_m, w'_m = (2/E)·[c_m(i) = 0]
    and J from :func:`ensemble_jacobian`: the first-order change of the sample when only the members
    without z_i generate it. This linearisation is the spec author's derivation, UNVERIFIED against the
    paper (docs/methods.md §2.18)."""
    x0, jacobian = ensemble_jacobian(models, noise, scheduler_config, device, timesteps)
    shift = complement_weights(codes, device, jacobian.dtype) - 1.0 / len(models)
    return x0, torch.tensordot(shift, jacobian, dims=1)


def counterfactual_distances(delta: torch.Tensor) -> np.ndarray:
    """(B, N) float64 ‖Δx(i)_b‖₂ over pixels: the score of training point i for generated image b
    (larger = more responsible)."""
    return delta.flatten(start_dim=2).norm(dim=2).T.to("cpu", torch.float64).numpy()


# ----------------------------------------------------------------------------------------- scorer


@dataclass(frozen=True)
class EncodedSettings:
    """An ``encoded`` method block (docs/methods.md §2.18): the measurement ``batch_size`` (None:
    the ground truth's)."""

    batch_size: int | None = None


def encoded_method_scores(ctx: ScoreContext) -> ScoreBlocks:
    """A registry scorer: :func:`encoded_influence` (loss units) of the attributed set ``query_set``.

    Inputs: ``data`` (and ``generated`` for ``gen``) image stores, member checkpoints ``members`` (in member order)
    and ``masks``, the (E, N) subset-mask store of the encoded pool (codes = masksᵀ, which must be a
    balanced code design). The model's ``unet`` and ``scheduler``, the ground truth's (seed, t) pairs,
    the setting ``batch_size`` (default: the ground truth's).
    """
    from diffattr.data.store import read_images, to_model_range
    from diffattr.ground_truth import GroundTruthConfig
    from diffattr.jobs import device
    from diffattr.methods.similarity import query_images
    from diffattr.models.ddpm import load_unet
    from diffattr.subsets import read_pool

    inputs, query_set = ctx.inputs, ctx.query_set
    paths = list(inputs.members)
    if not paths:
        raise ValueError("the encoded ensemble has no member checkpoints among its inputs")
    masks = read_pool(inputs.masks).astype(bool)
    n_train = len(read_images(inputs.data, "train"))
    if masks.shape != (len(paths), n_train):
        raise ValueError(f"masks of shape {masks.shape} do not match {len(paths)} members × "
                         f"{n_train} training samples")
    codes = masks.T
    check_codes(codes, len(paths))
    where = device()
    models = [load_unet(path, ctx.model["unet"], where) for path in paths]
    cfg = GroundTruthConfig.from_dict(ctx.ground_truth)
    abar = alphas_cumprod(ctx.model["scheduler"])
    pairs = cfg.pairs(len(abar))
    queries = to_model_range(query_images(inputs, query_set))
    scores = encoded_influence(models, queries, query_set, pairs, abar, codes,
                               int(EncodedSettings(**ctx.settings).batch_size or cfg.batch_size), where)
    attrs = {"members": len(paths), "pairs": len(pairs), "timestep_strategy": cfg.timestep_strategy,
             "timesteps": cfg.timesteps, "noise_seeds": list(cfg.noise_seeds)}
    return ScoreBlocks.from_matrix(scores, attrs)
