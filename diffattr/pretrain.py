"""Pretraining of the base text-to-image pipeline: the CPU stand-in for Stable Diffusion's pretraining.

docs/methods.md §3 "ArtBench SD-LoRA" LoRA-fine-tunes a *pretrained* Stable-Diffusion pipeline (miniSD);
real runs load one (``pipeline_path``). The embedded CPU default has no such pipeline, so a tiny one is
pretrained here on digits captioned "a digit N" (``caption_template``), and the fine-tuning stage then
adapts it with LoRA exactly as it would adapt miniSD. Two stages, in order:

1. The VAE (``AutoencoderKL``) alone, as an autoencoder: for images x in [−1, 1],
   q(z|x) = N(μ(x), diag σ²(x)) from the encoder, z = μ + σ ⊙ ξ with ξ ~ N(0, I) (reparameterisation,
   ξ drawn from a torch generator seeded per step), and the loss

       L_VAE = mean_pixels (D(z) − x)² + kl_weight · KL(q(z|x) ‖ N(0, I)),
       KL = ½ Σ_latent dims (μ² + σ² − 1 − log σ²), averaged over the batch.

   With ``invert_augment`` the pool is the base images *and* their inverted copies 255 − x (−x in model
   range), so the autoencoder also covers the styled (inverted) fine-tuning images, as SD's VAE covers
   any image.
2. The UNet (``UNet2DConditionModel``, all of its weights) on the trained VAE's latents
   z = ``latent_dist.mode()`` · ``scaling_factor`` (:func:`~diffattr.models.text_to_image.encode_images`)
   conditioned on the caption's text-encoder states c (last hidden state,
   :func:`~diffattr.models.text_to_image.encode_prompts`), with L_Simple at uniform t ∈ [0, T):

       L_Simple = mean_latent dims (ε_θ(√ᾱ_t z + √(1−ᾱ_t) ε, t, c) − ε)²,  ε ~ N(0, I)

   (:func:`~diffattr.models.text_to_image.latent_loss`), AdamW, cosine learning rate with 10 % linear
   warm-up (:func:`~diffattr.schedule.learning_rate`), gradient-norm clip 1.0.

The text encoder (CLIP architecture) is never trained: it stays at its seeded random initialisation,
frozen, in both pretraining and fine-tuning. Its states still tell captions apart (distinct token ids
give distinct embeddings), which is all the cross-attention needs here.

Every random draw of step s — the rows of the batch, the timesteps, the noise — is a pure function of
(``seed``, stage, s): rows and UNet draws come from ``np.random.default_rng([seed, stage, s])`` (stage
0 the VAE, 1 the UNet), the VAE's reparameterisation noise from a torch generator seeded by
``[seed, 2, s]``; the same configuration reproduces bit-identical weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL

from diffattr.atomic import atomic_path
from diffattr.data.store import to_model_range
from diffattr.methods.registry import method_settings
from diffattr.models.ddpm import alphas_cumprod as scheduler_alphas_cumprod
from diffattr.models.text_to_image import (
    TextToImageConfig,
    build_components,
    captions,
    encode_images,
    encode_prompts,
    latent_loss,
    save_components,
)
from diffattr.schedule import learning_rate

log = logging.getLogger(__name__)

WARMUP_FRACTION = 0.1
GRAD_CLIP = 1.0
LOG_COLUMNS = ["stage", "step", "loss"]


@dataclass(frozen=True)
class PretrainConfig:
    """The ``pretrain`` block of the config.

    ``vae_steps`` / ``unet_steps``: optimizer steps of each stage; ``batch_size``; ``lr``: AdamW's
    learning rate (constant for the VAE, the peak of the cosine schedule for the UNet); ``kl_weight``:
    the weight of KL(q(z|x) ‖ N(0, I)) in the VAE loss; ``caption_template``: the base captions ("a
    digit {label}"); ``invert_augment``: train the VAE on 255 − x as well; ``seed``: initialisation and
    every draw; ``log_every``: steps per row of the log table (mean loss of the window).
    """

    vae_steps: int = 400
    unet_steps: int = 800
    batch_size: int = 128
    lr: float = 1e-3
    kl_weight: float = 1e-4
    caption_template: str = "a digit {label}"
    invert_augment: bool = True
    seed: int = 0
    log_every: int = 100

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> PretrainConfig:
        out = cls(**method_settings(cls, cfg, "pretrain"))
        if min(out.vae_steps, out.unet_steps) < 0 or out.batch_size < 1 or out.log_every < 1:
            raise ValueError(f"pretrain needs steps >= 0, batch_size >= 1 and log_every >= 1, got {cfg}")
        return out


def _rows(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
    """``batch_size`` distinct rows of ``n`` (with replacement only when the pool is smaller)."""
    return rng.choice(n, size=batch_size, replace=batch_size > n)


def _torch_generator(*key: int) -> torch.Generator:
    """A CPU torch generator seeded by a numpy ``SeedSequence`` of ``key`` (a pure function of it)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    return torch.Generator().manual_seed(seed)


def _windows(losses: list[float], every: int, stage: str) -> list[dict[str, Any]]:
    """Rows (stage, step, loss): the mean loss of each ``every``-step window (the last may be shorter),
    ``step`` counting the steps done at the window's end."""
    rows = []
    for start in range(0, len(losses), every):
        window = losses[start : start + every]
        rows.append({"stage": stage, "step": start + len(window), "loss": float(np.mean(window))})
    return rows


def vae_pool(images: torch.Tensor, invert_augment: bool) -> torch.Tensor:
    """The VAE's training pool: ``images`` (N, C, H, W) in [−1, 1], followed by −images (the inverted
    copies 255 − x in model range) when ``invert_augment``."""
    return torch.cat([images, -images]) if invert_augment else images


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_VAE, reconstruction MSE) of a batch: mean_pixels (D(μ + σ ⊙ ξ) − x)² + kl_weight · KL with
    KL = ½ Σ (μ² + σ² − 1 − log σ²) over latent dims, batch-averaged; ξ ~ N(0, I) from ``generator``."""
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator=generator)  # μ + σ ⊙ ξ: differentiable in μ and σ
    mse = torch.nn.functional.mse_loss(vae.decode(z).sample, x)
    return mse + kl_weight * posterior.kl().mean(), mse


def train_vae(vae: AutoencoderKL, images: torch.Tensor, cfg: PretrainConfig) -> list[float]:
    """Train ``vae`` in place as an autoencoder on ``images`` (N, C, H, W) in [−1, 1] (plus −images with
    ``cfg.invert_augment``): ``cfg.vae_steps`` AdamW steps at constant ``cfg.lr`` on L_VAE
    (:func:`vae_loss`). Step s's rows come from ``np.random.default_rng([seed, 0, s])`` and its
    reparameterisation noise from a generator seeded by ``[seed, 2, s]``. Returns the per-step losses;
    the VAE is left in eval mode."""
    pool = vae_pool(images, cfg.invert_augment)
    if len(pool) == 0:
        raise ValueError("the VAE's training set is empty")
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr)
    losses = []
    for step in range(cfg.vae_steps):
        rows = _rows(np.random.default_rng([cfg.seed, 0, step]), len(pool), cfg.batch_size)
        loss, _ = vae_loss(vae, pool[torch.from_numpy(rows)], cfg.kl_weight, _torch_generator(cfg.seed, 2, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    vae.eval()
    return losses


def train_unet(unet: torch.nn.Module, latents: torch.Tensor, text_states: torch.Tensor,
               alphas_cumprod: torch.Tensor, cfg: PretrainConfig) -> list[float]:
    """Train every weight of ``unet`` in place on L_Simple (:func:`latent_loss`, batch mean) of
    ``latents`` (N, c, h, w) conditioned on ``text_states`` (N, L, H), row i on state i.

    Step s draws, from ``np.random.default_rng([seed, 1, s])``: the rows, t uniform in [0, T) (T =
    len(``alphas_cumprod``)) and ε ~ N(0, I). AdamW with the cosine learning rate with 10 % warm-up
    peaking at ``cfg.lr`` (:func:`~diffattr.schedule.learning_rate`), gradient-norm clip 1.0. Returns
    the per-step losses; the UNet is left in eval mode."""
    if len(latents) != len(text_states):
        raise ValueError(f"{len(latents)} latents but {len(text_states)} text states")
    if len(latents) == 0:
        raise ValueError("the UNet's training set is empty")
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    shape = tuple(latents.shape[1:])
    losses = []
    for step in range(cfg.unet_steps):
        rng = np.random.default_rng([cfg.seed, 1, step])
        rows = torch.from_numpy(_rows(rng, len(latents), cfg.batch_size))
        t = torch.from_numpy(rng.integers(0, len(alphas_cumprod), size=len(rows)))
        noise = torch.from_numpy(rng.standard_normal((len(rows), *shape), dtype=np.float32))
        loss = latent_loss(unet, latents[rows], text_states[rows], t, noise, alphas_cumprod).mean()
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg.unet_steps, cfg.lr, WARMUP_FRACTION)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), GRAD_CLIP)
        opt.step()
        losses.append(loss.item())
    unet.eval()
    return losses


def pretrain_base(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    model_config: dict[str, Any],
    scheduler_config: dict[str, Any],
    pretrain_config: dict[str, Any],
    words: list[str],
    out_dir: str,
    log_table: str,
) -> pd.DataFrame:
    """Pretrain a tiny base pipeline on uint8 ``images`` (N, H, W, C) captioned
    ``caption_template.format(label=class_names[label])``; write it to ``out_dir``
    (:func:`~diffattr.models.text_to_image.save_components`, atomically) and the log table (stage,
    step, loss: the mean of each ``log_every`` window) to ``log_table``; return the table.

    ``model_config`` is the ``text_to_image`` block (its ``pipeline_path`` must be unset: a loaded
    pipeline is already pretrained); components are built under ``pretrain.seed`` with a tokenizer
    whose vocabulary covers ``words`` (the fine-tuning captions) and the base captions. Stage 1 trains
    the VAE (:func:`train_vae`), stage 2 the UNet (:func:`train_unet`) on the trained VAE's latents
    and the frozen text encoder's states.
    """
    model = TextToImageConfig.from_dict(model_config)
    if model.pipeline_path is not None:
        raise ValueError(f"pipeline_path {model.pipeline_path} is set: a loaded pipeline is already pretrained")
    cfg = PretrainConfig.from_dict(pretrain_config)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    base_captions = captions([class_names[int(i)] for i in labels], cfg.caption_template)
    comps = build_components(model, list(words) + sorted(set(base_captions)), cfg.seed)
    x = torch.from_numpy(to_model_range(images))

    t0 = time.perf_counter()
    vae_losses = train_vae(comps.vae, x, cfg)
    log.info("pretrained the VAE: %d steps, final loss %.5f (%.2f s/step)", cfg.vae_steps,
             _last_window(vae_losses, cfg.log_every), (time.perf_counter() - t0) / max(1, cfg.vae_steps))

    latents = encode_images(comps.vae, x)
    text_states = encode_prompts(comps, base_captions)
    abar = scheduler_alphas_cumprod(scheduler_config)
    t0 = time.perf_counter()
    unet_losses = train_unet(comps.unet, latents, text_states, abar, cfg)
    log.info("pretrained the UNet: %d steps, final loss %.5f (%.2f s/step; scaled latents have std %.3f)",
             cfg.unet_steps, _last_window(unet_losses, cfg.log_every),
             (time.perf_counter() - t0) / max(1, cfg.unet_steps), latents.std().item())

    table = pd.DataFrame(_windows(vae_losses, cfg.log_every, "vae") + _windows(unet_losses, cfg.log_every, "unet"),
                         columns=LOG_COLUMNS)
    save_components(comps, out_dir)
    with atomic_path(log_table) as tmp:
        table.to_csv(tmp, index=False)
    return table


def _last_window(losses: list[float], every: int) -> float:
    """Mean of the last ``every`` losses (NaN when there are none)."""
    return float(np.mean(losses[-every:])) if losses else float("nan")


def pretrain_job(data_store: str, params: dict[str, Any], out_dir: str, log_table: str) -> pd.DataFrame:
    """pretrain_job: :func:`pretrain_base` on the ``base`` split of the image store, with
    ``params["text_to_image"]``, ``["scheduler"]``, ``["pretrain"]`` and ``["words"]``."""
    from diffattr.data.store import read_class_names, read_images, read_labels

    images = read_images(data_store, "base")  # a store without a base split raises its own KeyError
    labels = read_labels(data_store, "base")
    class_names = read_class_names(data_store, "base")
    return pretrain_base(images, labels, class_names, params["text_to_image"], params["scheduler"],
                         params["pretrain"], params["words"], out_dir, log_table)
