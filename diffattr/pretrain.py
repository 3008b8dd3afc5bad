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

Both stages run on the one training engine (:func:`diffattr.fit.fit`), with AdamW's weight decay, β
and ε from the ``pretrain`` block (defaults: the ``train`` block's, 1e-6 and (0.95, 0.999), 1e-8 — not
torch's 0.01 and (0.9, 0.999)), and each keeps a resume state every ``resume_every`` steps and after
its last step: a job killed in either stage and rerun continues there, to the same bytes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL

from diffattr.atomic import atomic_path
from diffattr.data.store import to_model_range
from diffattr.fit import ADAM_BETAS, ADAM_EPS, WEIGHT_DECAY, FitSettings, discard_state, fit, remove_resume_dir
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
    every draw; ``log_every``: steps per row of the log table (mean loss of the window);
    ``weight_decay``, ``adam_betas``, ``adam_eps``: AdamW's, the ``train`` block's defaults
    (:mod:`diffattr.fit`); ``resume_every``: steps between saved resume states of each stage.
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
    weight_decay: float = WEIGHT_DECAY
    adam_betas: tuple[float, float] = ADAM_BETAS
    adam_eps: float = ADAM_EPS
    resume_every: int = 100

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> PretrainConfig:
        settings = method_settings(cls, cfg, "pretrain")
        if "adam_betas" in settings:
            settings["adam_betas"] = tuple(settings["adam_betas"])
        out = cls(**settings)
        if min(out.vae_steps, out.unet_steps) < 0 or min(out.batch_size, out.log_every, out.resume_every) < 1:
            raise ValueError(f"pretrain needs steps >= 0 and batch_size, log_every, resume_every >= 1, got {cfg}")
        return out


def _rows(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
    """``batch_size`` distinct rows of ``n`` (with replacement only when the pool is smaller)."""
    return rng.choice(n, size=batch_size, replace=batch_size > n)


def _torch_generator(*key: int) -> torch.Generator:
    """A CPU torch generator seeded by a numpy ``SeedSequence`` of ``key`` (a pure function of it)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    return torch.Generator().manual_seed(seed)


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


def fit_settings(cfg: PretrainConfig, stage: str) -> FitSettings:
    """The engine's settings of pretraining stage ``stage``: AdamW with the config's weight decay, β and
    ε; the VAE at constant ``lr`` without clipping, the UNet on the cosine schedule with
    :data:`WARMUP_FRACTION` warm-up and gradient-norm clip :data:`GRAD_CLIP`; the state saved every
    ``resume_every`` steps and after the stage's last (so a later stage's crash keeps it)."""
    steps = {"vae": cfg.vae_steps, "unet": cfg.unet_steps}[stage]
    warmup, clip = (None, None) if stage == "vae" else (WARMUP_FRACTION, GRAD_CLIP)
    return FitSettings(steps=steps, lr=cfg.lr, warmup_fraction=warmup, weight_decay=cfg.weight_decay,
                       adam_betas=cfg.adam_betas, adam_eps=cfg.adam_eps, grad_clip=clip,
                       resume_every=cfg.resume_every, log_every=cfg.log_every, save_final=True)


def state_path(resume_dir: str | Path, stage: str) -> Path:
    """The resume state of pretraining stage ``stage`` ("vae", "unet") in ``resume_dir``."""
    return Path(resume_dir) / f"{stage}.safetensors"


def _stage_key(cfg: PretrainConfig, stage: str, n: int, key: str) -> str:
    """What a stage's resume state must have been written for: the stage, its settings, the pool size
    and the caller's ``key`` (the model and its data)."""
    return json.dumps([stage, asdict(cfg), n, key], sort_keys=True)


def train_vae(vae: AutoencoderKL, images: torch.Tensor, cfg: PretrainConfig, resume_dir: str | Path,
              key: str = "") -> list[dict[str, float]]:
    """Train ``vae`` in place as an autoencoder on ``images`` (N, C, H, W) in [−1, 1] (plus −images with
    ``cfg.invert_augment``): ``cfg.vae_steps`` steps of the engine (:func:`diffattr.fit.fit`) at
    constant ``cfg.lr`` on L_VAE (:func:`vae_loss`). Step s's rows come from
    ``np.random.default_rng([seed, 0, s])`` and its reparameterisation noise from a generator seeded by
    ``[seed, 2, s]``. Resumes from, and saves to, :func:`state_path` of ``resume_dir`` (``key``: see
    :func:`_stage_key`). Returns the log rows (step, loss, lr); the VAE is left in eval mode."""
    pool = vae_pool(images, cfg.invert_augment)
    if len(pool) == 0:
        raise ValueError("the VAE's training set is empty")
    vae.train().requires_grad_(True)

    def draws(step: int) -> tuple[torch.Tensor, torch.Generator]:
        rows = _rows(np.random.default_rng([cfg.seed, 0, step]), len(pool), cfg.batch_size)
        return pool[torch.from_numpy(rows)], _torch_generator(cfg.seed, 2, step)

    rows = fit(lambda d: vae_loss(vae, d[0], cfg.kl_weight, d[1])[0], dict(vae.named_parameters()), draws,
               fit_settings(cfg, "vae"), state_path(resume_dir, "vae"), _stage_key(cfg, "vae", len(pool), key),
               desc="pretrain vae")
    vae.eval()
    return rows


def train_unet(unet: torch.nn.Module, latents: torch.Tensor, text_states: torch.Tensor,
               alphas_cumprod: torch.Tensor, cfg: PretrainConfig, resume_dir: str | Path,
               key: str = "") -> list[dict[str, float]]:
    """Train every weight of ``unet`` in place on L_Simple (:func:`latent_loss`, batch mean) of
    ``latents`` (N, c, h, w) conditioned on ``text_states`` (N, L, H), row i on state i.

    Step s draws, from ``np.random.default_rng([seed, 1, s])``: the rows, t uniform in [0, T) (T =
    len(``alphas_cumprod``)) and ε ~ N(0, I). The engine (:func:`diffattr.fit.fit`) with the cosine
    learning rate with 10 % warm-up peaking at ``cfg.lr``, gradient-norm clip 1.0 (:func:`fit_settings`).
    Resumes from, and saves to, :func:`state_path` of ``resume_dir``. Returns the log rows (step, loss,
    lr); the UNet is left in eval mode."""
    if len(latents) != len(text_states):
        raise ValueError(f"{len(latents)} latents but {len(text_states)} text states")
    if len(latents) == 0:
        raise ValueError("the UNet's training set is empty")
    unet.train().requires_grad_(True)
    shape = tuple(latents.shape[1:])

    def draws(step: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([cfg.seed, 1, step])
        rows = torch.from_numpy(_rows(rng, len(latents), cfg.batch_size))
        t = torch.from_numpy(rng.integers(0, len(alphas_cumprod), size=len(rows)))
        noise = torch.from_numpy(rng.standard_normal((len(rows), *shape), dtype=np.float32))
        return latents[rows], text_states[rows], t, noise

    def loss(d: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return latent_loss(unet, *d, alphas_cumprod).mean()

    rows = fit(loss, dict(unet.named_parameters()), draws, fit_settings(cfg, "unet"), state_path(resume_dir, "unet"),
               _stage_key(cfg, "unet", len(latents), key), desc="pretrain unet")
    unet.eval()
    return rows


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
    resume_dir: str | None = None,
) -> pd.DataFrame:
    """Pretrain a tiny base pipeline on uint8 ``images`` (N, H, W, C) captioned
    ``caption_template.format(label=class_names[label])``; write it to ``out_dir``
    (:func:`~diffattr.models.text_to_image.save_components`, atomically) and the log table (stage,
    step, loss: the mean of each ``log_every`` window) to ``log_table``; return the table.

    ``model_config`` is the ``text_to_image`` block (its ``pipeline_path`` must be unset: a loaded
    pipeline is already pretrained); components are built under ``pretrain.seed`` with a tokenizer
    whose vocabulary covers ``words`` (the fine-tuning captions) and the base captions. Stage 1 trains
    the VAE (:func:`train_vae`), stage 2 the UNet (:func:`train_unet`) on the trained VAE's latents
    and the frozen text encoder's states. Each stage keeps its progress in ``resume_dir`` (default:
    :func:`default_resume_dir` of ``out_dir``), so a rerun after a crash continues where it stopped;
    the directory is removed once the pipeline and the table are written.
    """
    model = TextToImageConfig.from_dict(model_config)
    if model.pipeline_path is not None:
        raise ValueError(f"pipeline_path {model.pipeline_path} is set: a loaded pipeline is already pretrained")
    cfg = PretrainConfig.from_dict(pretrain_config)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    resume = Path(resume_dir) if resume_dir is not None else default_resume_dir(out_dir)
    key = json.dumps([model_config, scheduler_config, list(words), len(images)], sort_keys=True)
    base_captions = captions([class_names[int(i)] for i in labels], cfg.caption_template)
    comps = build_components(model, list(words) + sorted(set(base_captions)), cfg.seed)
    x = torch.from_numpy(to_model_range(images))

    t0 = time.perf_counter()
    vae_rows = train_vae(comps.vae, x, cfg, resume, key)
    log.info("pretrained the VAE: %d steps, final loss %.5f (%.2f s/step)", cfg.vae_steps,
             _last_loss(vae_rows), (time.perf_counter() - t0) / max(1, cfg.vae_steps))

    latents = encode_images(comps.vae, x)
    text_states = encode_prompts(comps, base_captions)
    abar = scheduler_alphas_cumprod(scheduler_config)
    t0 = time.perf_counter()
    unet_rows = train_unet(comps.unet, latents, text_states, abar, cfg, resume, key)
    log.info("pretrained the UNet: %d steps, final loss %.5f (%.2f s/step; scaled latents have std %.3f)",
             cfg.unet_steps, _last_loss(unet_rows),
             (time.perf_counter() - t0) / max(1, cfg.unet_steps), latents.std().item())

    table = pd.DataFrame([{"stage": stage, "step": r["step"], "loss": r["loss"]}
                          for stage, rows in (("vae", vae_rows), ("unet", unet_rows)) for r in rows],
                         columns=LOG_COLUMNS)
    save_components(comps, out_dir)
    with atomic_path(log_table) as tmp:
        table.to_csv(tmp, index=False)
    for stage in ("vae", "unet"):  # only now: the pipeline and its table are complete
        discard_state(state_path(resume, stage))
    remove_resume_dir(resume)
    return table


def default_resume_dir(out_dir: str | Path) -> Path:
    """Where pretraining into ``out_dir`` keeps its progress when no resume directory is given: the
    sibling ``{out_dir}.resume`` (outside the output directory, which Snakemake clears before a rerun)."""
    out = Path(out_dir)
    return out.with_name(out.name + ".resume")


def _last_loss(rows: list[dict[str, float]]) -> float:
    """The last log row's mean loss (NaN when there are none)."""
    return float(rows[-1]["loss"]) if rows else float("nan")


def pretrain_job(data_store: str, params: dict[str, Any], out_dir: str, log_table: str,
                 resume_dir: str | None = None) -> pd.DataFrame:
    """pretrain_job: :func:`pretrain_base` on the ``base`` split of the image store, with
    ``params["text_to_image"]``, ``["scheduler"]``, ``["pretrain"]`` and ``["words"]``, resumable
    from ``resume_dir`` (default :func:`default_resume_dir`)."""
    from diffattr.data.store import read_class_names, read_images, read_labels

    images = read_images(data_store, "base")  # a store without a base split raises its own KeyError
    labels = read_labels(data_store, "base")
    class_names = read_class_names(data_store, "base")
    return pretrain_base(images, labels, class_names, params["text_to_image"], params["scheduler"],
                         params["pretrain"], params["words"], out_dir, log_table, resume_dir)
