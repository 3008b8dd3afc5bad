"""Per-sample gradient features g(x) = (1/K) Σ_{t∈T_K} (1/S) Σ_s ∇_θ F(x, t, ε_{s,t}), projected.

docs/methods.md §0 ("Feature"), §1 (output functions F), §2.10–2.11 (TRAK / D-TRAK): the gradient is
averaged over the K timesteps (and the noise seeds, one ε per (seed, t)) *before* projection; the
model is in eval mode; per-sample gradients come from ``torch.func`` (``functional_call`` +
``vmap(grad)``). diffusers' fused attention (scaled-dot-product) is swapped for the plain
processor, which vmap can batch. ε and t are pure functions of (seed, split, sample id, t), so a
sample's feature does not depend on its batch, its shard or the device.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from diffattr.models.ddpm import count_parameters, noisy_draws
from diffattr.models.family import condition_kwargs
from diffattr.models.vmap import NonFiniteGradientError, prepare_for_vmap  # noqa: F401  (re-exported)
from diffattr.noise import gaussian_noise, sample_timesteps
from diffattr.outputs import output_values
from diffattr.progress import progress
from diffattr.projection import ProjectionConfig, Projector
from diffattr.store import SHARD_SIZE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSpec:
    """A named block of the config's ``features``: how a model's samples become feature vectors."""

    output: str = "loss"
    timestep_strategy: str = "uniform"
    timesteps: int = 10
    noise_seeds: tuple[int, ...] = (0,)
    checkpoint: float = 1.0
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    shard_size: int = SHARD_SIZE
    batch_size: int = 32
    normalize_timesteps: bool = False

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> FeatureSpec:
        cfg = dict(cfg)
        cfg["noise_seeds"] = tuple(cfg.get("noise_seeds", (0,)))
        cfg["projection"] = ProjectionConfig(**cfg.get("projection", {}))
        return cls(**cfg)


def per_sample_gradients(
    model: torch.nn.Module,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    output: str,
    abar: torch.Tensor,
    betas: torch.Tensor,
    normalize: bool = False,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, p) gradients of (1/D) Σ_d F(x_b, t_{b,d}, ε_{b,d}) over the D = K·S draws of each sample.

    ``x0`` (B, C, H, W); ``timesteps`` (B, D); ``noise`` (B, D, C, H, W); ``cond`` (B,) the samples'
    conditions (None: unconditional, :mod:`diffattr.models.family`). Only the parameters with
    ``requires_grad`` are differentiated — every DDPM weight, or a LoRA adapter's weights; the others
    enter as constants, so no gradient of a frozen weight is ever computed — flattened in
    ``model.named_parameters()`` order (the row order of the projection). ``normalize``: DAS's
    per-timestep normalisation (docs/methods.md §2.13 step 2), (1/D) Σ_d ∇F_d / ‖∇F_d‖ — each draw's
    gradient is scaled to unit norm before the average (with one noise seed, one draw per t).
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def sample_output(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                      c: torch.Tensor | None) -> torch.Tensor:
        x_t, tt, ee = noisy_draws(x[None], t[None], eps[None], abar)
        labels = None if c is None else c[None].expand(len(tt))
        pred = functional_call(model, (p, frozen, buffers), (x_t, tt), condition_kwargs(labels)).sample
        return output_values(output, pred, ee, tt, betas, abar).mean()

    c_dim = None if cond is None else 0
    if not normalize:
        grads = vmap(grad(sample_output), in_dims=(None, 0, 0, 0, c_dim))(params, x0, timesteps, noise, cond)
        return torch.cat([grads[n].reshape(x0.shape[0], -1) for n in params], dim=1)

    def draw_gradients(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                       c: torch.Tensor | None) -> dict:
        one_draw = grad(lambda q, t1, e1: sample_output(q, x, t1[None], e1[None], c))
        return vmap(one_draw, in_dims=(None, 0, 0))(p, t, eps)

    grads = vmap(draw_gradients, in_dims=(None, 0, 0, 0, c_dim))(params, x0, timesteps, noise, cond)
    flat = torch.cat([grads[n].reshape(*timesteps.shape, -1) for n in params], dim=2)
    return (flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-30)).mean(dim=1)


def featurize(
    model: torch.nn.Module,
    images: np.ndarray,
    sample_ids: np.ndarray,
    split: str,
    spec: FeatureSpec,
    scheduler: Any,
    device: str = "cpu",
    projector: Projector | None = None,
    timesteps: np.ndarray | None = None,
    cond: np.ndarray | None = None,
) -> np.ndarray:
    """Projected features (n, k) float32 of the network's float inputs (n, C, H, W) — pixels in
    [−1, 1], or latents — with ids ``sample_ids`` and conditions ``cond`` (n,) (None: unconditional).

    ``timesteps`` (n, K), when given, are each row's own timesteps instead of the spec's set:
    Diffusion-TracIn's trained timesteps (docs/methods.md §2.5) or Journey-TRAK's sampling steps (§2.12).
    Otherwise a ``trained`` spec's attributed samples, never trained on, use the ``uniform`` set.
    """
    model = prepare_for_vmap(model.to(device))
    projector = projector or Projector(spec.projection, count_parameters(model), device)
    abar = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    betas = scheduler.betas.to(device=device, dtype=torch.float32)
    num_t = len(abar)
    shape = images.shape[1:]
    out = np.empty((len(images), projector.dim), dtype=np.float32)
    start_time = time.perf_counter()
    with progress(len(images), f"featurize {split}", "row") as bar:
        for start in range(0, len(images), spec.batch_size):
            ids = sample_ids[start : start + spec.batch_size]
            if timesteps is not None:
                ts = timesteps[start : start + spec.batch_size]
            else:
                strategy = "uniform" if spec.timestep_strategy == "trained" else spec.timestep_strategy
                ts = sample_timesteps(strategy, spec.timesteps, num_t, spec.noise_seeds[0], split, ids)
            eps = np.concatenate([gaussian_noise(s, split, ids, ts, shape) for s in spec.noise_seeds], axis=1)
            ts_all = np.tile(ts, (1, len(spec.noise_seeds)))
            g = per_sample_gradients(
                model,
                torch.from_numpy(images[start : start + spec.batch_size]).to(device),
                torch.from_numpy(ts_all).to(device),
                torch.from_numpy(eps).to(device),
                spec.output,
                abar,
                betas,
                spec.normalize_timesteps,
                None if cond is None else torch.from_numpy(cond[start : start + spec.batch_size]).to(device),
            )
            bad = ~torch.isfinite(g).all(dim=1)
            if bad.any():
                first = int(ids[int(torch.nonzero(bad)[0])])
                raise NonFiniteGradientError(f"the gradient of {split} sample {first} is not finite (NaN or inf)")
            out[start : start + len(ids)] = projector(g).cpu().numpy()
            bar.update(len(ids))
    seconds = time.perf_counter() - start_time
    log.info("featurized %d %s rows in %.1f s (%.1f rows/s)", len(images), split, seconds, len(images) / max(seconds, 1e-9))
    return out


def featurize_trajectory(model: torch.nn.Module, trajectory: np.ndarray, step_timesteps: np.ndarray,
                         sample_ids: np.ndarray, spec: FeatureSpec, scheduler: Any, device: str = "cpu",
                         projector: Projector | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Journey-TRAK's query features (docs/methods.md §2.12, D-TRAK's one-score-per-image form):
    φ_s(x) = P ∇_θ F(re-noise(x̂₀^(t_s), ε_s), t_s) at every sampling step s, ε_s fresh per
    (noise seed, sample, t_s) and averaged over the spec's noise seeds; returns (the mean over steps
    (n, k) — the average gradient, projection being linear — and the per-step features (n, S, k)).
    ``trajectory`` (n, S, C, H, W) holds x̂₀ of each step, ``step_timesteps`` (S,) the steps' t."""
    n, steps = trajectory.shape[:2]
    rows = featurize(model, trajectory.reshape(n * steps, *trajectory.shape[2:]), np.repeat(sample_ids, steps),
                     "journey", spec, scheduler, device, projector, np.tile(step_timesteps, n)[:, None])
    per_step = rows.reshape(n, steps, -1)
    return per_step.mean(axis=1), per_step


def featurize_shard(model_path: str, image_store: str, split: str, start: int, stop: int, spec_config: dict[str, Any],
                    model_config: dict[str, Any], out_path: str, device: str = "cpu") -> np.ndarray:
    """featurize job: rows [start, stop) of ``split`` → one shard store with its completion marker.
    Split ``journey`` reads the generated samples' DDIM trajectory (``image_store`` is the
    trajectory store) and also stores the per-step features (§2.12)."""
    from diffattr.data.store import read_labels
    from diffattr.models.ddpm import build_scheduler
    from diffattr.models.family import load_model
    from diffattr.store import spec_hash, write_shard

    spec = FeatureSpec.from_dict({k: v for k, v in spec_config.items() if k != "trained"})
    loaded = load_model(model_path, model_config, device)
    model = loaded.network
    scheduler = build_scheduler(model_config["scheduler"])
    attrs, extras = {"split": split, "model": model_path}, None
    if split == "journey":
        from diffattr.sample import read_trajectory

        trajectory, step_timesteps = read_trajectory(image_store, start, stop)
        _check_rows(len(trajectory), start, stop, image_store, split)
        features, per_step = featurize_trajectory(model, trajectory, step_timesteps, np.arange(start, stop), spec,
                                                  scheduler, device)
        extras = {"steps": per_step, "step_timesteps": np.tile(step_timesteps, (len(trajectory), 1))}
    else:
        inputs, cond = loaded.inputs(image_store, split, slice(start, stop))
        _check_rows(len(inputs), start, stop, image_store, split)
        timesteps = None
        if spec.timestep_strategy == "trained" and split == "train":
            n_train = len(read_labels(image_store, split))
            timesteps = _trained_timesteps(spec_config["trained"], n_train, model_config)[start:stop, None]
        features = featurize(model, inputs, np.arange(start, stop), split, spec, scheduler, device,
                             timesteps=timesteps, cond=cond)
    write_shard(out_path, features, start, stop, spec_hash(spec_config), attrs, extras)
    return features


def _check_rows(rows: int, start: int, stop: int, store: str, split: str) -> None:
    if rows != stop - start:
        raise ValueError(f"{store} has {start + rows} {split} rows, fewer than the shard's end row {stop}")


def _trained_timesteps(run: dict[str, int], n_train: int, model_config: dict[str, Any]) -> np.ndarray:
    """The timestep each training sample was last trained at before the spec's checkpoint (§2.5)."""
    from diffattr.train import trained_timesteps

    trained = trained_timesteps(n_train, run["batch_size"], run["seed"], run["step"],
                                model_config["scheduler"]["num_train_timesteps"])
    if (trained < 0).any():
        raise ValueError(f"train sample {int(np.argmax(trained < 0))} was never trained on before step "
                         f"{run['step']}, so it has no trained timestep")
    return trained
