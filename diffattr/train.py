"""Training of full, subset, ensemble and counterfactual models (a DDPM, or a LoRA); resumable.

The loop is the one training engine, :mod:`diffattr.fit` (shared with pretraining); this module
supplies L_Simple, the seeded draws and the checkpoints.

docs/methods.md §3: uniform t, ε-prediction, loss = mean over pixels and batch of (ε_θ(x_t,t) − ε)²,
AdamW (β = (0.95, 0.999), weight decay 1e-6), cosine LR with warm-up, gradient-norm clip 1.0,
optional random horizontal flip, no EMA.

Every random draw of step s — which samples, their timesteps, their noise and flips — is a pure
function of (seed, s) (:func:`training_draws`), so a job killed at step s and resumed from its last
saved state produces bit-identical weights, and the timesteps each sample saw can be recomputed
later (Diffusion-TracIn, §2.5) without having been stored. The training-log table (step, mean loss
of the window, learning rate) is part of the saved state too, so a resumed run writes the same log
bytes as an uninterrupted one; it holds no wall time (throughput is in the job's log, wall time in
Snakemake's benchmark file).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffattr import fit
from diffattr.atomic import atomic_path
from diffattr.fit import LOG_COLUMNS, RESUME_ROOT, remove_resume_dir  # noqa: F401 (this module's names before fit.py)
from diffattr.models.ddpm import add_noise, alphas_cumprod
from diffattr.models.family import Model, denoise, save_model
from diffattr.schedule import checkpoint_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` block of the config; the one home of its defaults (the schema gives none, and
    the engine's :class:`diffattr.fit.FitSettings` none: :func:`fit_settings` passes every field)."""

    steps: int
    batch_size: int
    lr: float
    warmup_fraction: float = 0.1
    weight_decay: float = fit.WEIGHT_DECAY
    adam_betas: tuple[float, float] = fit.ADAM_BETAS
    adam_eps: float = fit.ADAM_EPS
    grad_clip: float = 1.0
    hflip: bool = False
    checkpoint_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    resume_every: int = 100
    log_every: int = 100

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TrainConfig:
        cfg = dict(cfg)
        for key in ("adam_betas", "checkpoint_fractions"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        return cls(**cfg)


@dataclass(frozen=True)
class StepDraws:
    """What step s of training draws: rows of the training subset, timesteps, noise and flips."""

    rows: np.ndarray
    timesteps: np.ndarray
    noise: np.ndarray
    flips: np.ndarray


def batch_rows(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of batch ``step``: consecutive slices of a stream of per-epoch permutations.

    Epoch e's permutation is seeded by (seed, e), so the batch is a pure function of (seed, step).
    """
    start = step * batch_size
    rows = []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n)
        perm = np.random.default_rng([seed, 0, epoch]).permutation(n)
        rows.extend(perm[offset : offset + batch_size - len(rows)].tolist())
    return np.asarray(rows, dtype=np.int64)


def training_draws(
    n: int, batch_size: int, seed: int, step: int, num_train_timesteps: int, image_shape: tuple[int, ...]
) -> StepDraws:
    """All randomness of optimizer step ``step`` for a training set of ``n`` samples."""
    rng = np.random.default_rng([seed, 1, step])
    return StepDraws(
        rows=batch_rows(n, batch_size, seed, step),
        timesteps=rng.integers(0, num_train_timesteps, size=batch_size),
        noise=rng.standard_normal((batch_size, *image_shape), dtype=np.float32),
        flips=rng.random(batch_size) < 0.5,
    )


def trained_timesteps(n: int, batch_size: int, seed: int, until_step: int, num_train_timesteps: int) -> np.ndarray:
    """t_z^c (n,): the timestep each sample was last trained at before optimizer step ``until_step``
    (−1 if never): Diffusion-TracIn's record (docs/methods.md §2.5). Training's draws are pure functions
    of (seed, step) (:func:`training_draws`), so the record is replayed exactly rather than stored."""
    last = np.full(n, -1, dtype=np.int64)
    for step in range(until_step):
        rng = np.random.default_rng([seed, 1, step])
        last[batch_rows(n, batch_size, seed, step)] = rng.integers(0, num_train_timesteps, size=batch_size)
    return last


def fit_settings(cfg: TrainConfig) -> fit.FitSettings:
    """The engine's settings (:class:`diffattr.fit.FitSettings`) of a ``train`` block: its AdamW,
    cosine schedule with warm-up, clip, resume and log intervals."""
    return fit.FitSettings(steps=cfg.steps, lr=cfg.lr, warmup_fraction=cfg.warmup_fraction,
                           weight_decay=cfg.weight_decay, adam_betas=cfg.adam_betas, adam_eps=cfg.adam_eps,
                           grad_clip=cfg.grad_clip, resume_every=cfg.resume_every, log_every=cfg.log_every)


def l_simple(model: Model, data: torch.Tensor, cond: torch.Tensor | None, hflip: bool, draws: StepDraws,
             abar: torch.Tensor) -> torch.Tensor:
    """L_Simple of one step's draws: mean over pixels and batch of (ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t, c) − ε)²
    for x0 = ``data[rows]`` (mirrored where ``flips`` when ``hflip``), c = ``cond[rows]``."""
    rows = torch.from_numpy(draws.rows).to(data.device)
    x0 = data[rows]
    if hflip:
        x0 = torch.where(torch.from_numpy(draws.flips).to(data.device).view(-1, 1, 1, 1), x0.flip(-1), x0)
    t = torch.from_numpy(draws.timesteps).to(data.device)
    eps = torch.from_numpy(draws.noise).to(data.device)
    labels = None if cond is None else cond[rows]
    pred = denoise(model.network, add_noise(x0, eps, t, abar), t, labels)
    return torch.nn.functional.mse_loss(pred, eps)


def _step(model: Model, opt: torch.optim.Optimizer, data: torch.Tensor, cond: torch.Tensor | None, cfg: TrainConfig,
          seed: int, step: int, abar: torch.Tensor) -> float:
    """One optimiser step of L_Simple (:func:`l_simple`) on the step's seeded draws (rows, t, ε,
    flips) through the engine's update (:func:`diffattr.fit.update`); its loss."""
    draws = training_draws(len(data), cfg.batch_size, seed, step, len(abar), tuple(data.shape[1:]))
    return fit.update(opt, l_simple(model, data, cond, cfg.hflip, draws, abar), fit_settings(cfg).learning_rate(step),
                      cfg.grad_clip)


class _EpochLines:
    """The job log's line per epoch: epochs done, steps done, mean loss since the last line and
    steps per second since this process started (or resumed)."""

    def __init__(self, cfg: TrainConfig, n: int) -> None:
        self.cfg, self.n = cfg, n
        self.total = -(-cfg.steps * cfg.batch_size // n)
        self.start: int | None = None
        self.loss, self.last_line, self.t0 = 0.0, 0, time.perf_counter()

    def __call__(self, done: int, loss: float) -> None:
        """Account step ``done`` (1-based) with its ``loss``; log at an epoch boundary or the end."""
        if self.start is None:  # the first step of this process: training began, or resumed, here
            self.start = self.last_line = done - 1
        self.loss += loss
        epoch = done * self.cfg.batch_size // self.n  # epochs completed (the last may be partial)
        boundary = epoch > (done - 1) * self.cfg.batch_size // self.n
        if boundary or done == self.cfg.steps:
            log.info("epoch %d/%d (step %d/%d): loss %.4f, %.1f steps/s", epoch if boundary else self.total,
                     self.total, done, self.cfg.steps, self.loss / (done - self.last_line),
                     (done - self.start) / max(time.perf_counter() - self.t0, 1e-9))
            self.loss, self.last_line = 0.0, done


def train(
    model: Model,
    inputs: np.ndarray,
    cond: np.ndarray | None,
    train_config: dict[str, Any],
    seed: int,
    checkpoints: list[str],
    log_table: str,
    resume_dir: str,
) -> pd.DataFrame:
    """Train ``model`` (from :func:`diffattr.models.family.fresh_model`) on its float ``inputs``
    (N, C, h, w) — pixels, or latents — with conditions ``cond`` (N,) (None: unconditional), and write
    ``checkpoints`` (one per checkpoint step, in order, the last = final weights) and a training-log table.

    Progress (trainable weights, AdamW moments, checkpoints reached) is kept in ``resume_dir`` every
    ``resume_every`` steps; a rerun continues from there. On success ``resume_dir`` is removed, and
    so is each parent it leaves empty up to the resume root (:func:`remove_resume_dir`).
    """
    cfg = TrainConfig.from_dict(train_config)
    steps_to_save = checkpoint_steps(cfg.steps, cfg.checkpoint_fractions)
    if len(steps_to_save) != len(checkpoints):
        raise ValueError(f"expected {len(steps_to_save)} checkpoint paths, got {len(checkpoints)}")
    if len(inputs) == 0:
        raise ValueError("the training set is empty")
    if cfg.hflip and model.components is not None:
        raise ValueError("train.hflip flips the network's inputs, which are latents for the text_to_image family; "
                         "set it to false")
    model.network.train()
    abar = alphas_cumprod(model.params["scheduler"])
    data = torch.from_numpy(inputs).to(model.device)
    labels = None if cond is None else torch.from_numpy(cond).to(model.device)
    resume = Path(resume_dir)
    key = json.dumps([model.params, train_config, seed, len(inputs)], sort_keys=True)
    state_path = resume / "state.safetensors"
    meta = {**model.params, "seed": seed, "n_train": len(inputs)}
    epochs = _EpochLines(cfg, len(inputs))

    def after_step(done: int, loss: float) -> None:
        epochs(done, loss)
        if done in steps_to_save:
            save_model(model, str(resume / f"step{done}.safetensors"), {**meta, "step": done})

    # _step is the whole step (not a loss closure for fit.fit): the per-step seam the resume tests interrupt
    rows_log = fit.fit_steps(lambda opt, step: _step(model, opt, data, labels, cfg, seed, step, abar),
                             model.trainable(), fit_settings(cfg), state_path, key, after_step)
    for step, path in zip(steps_to_save, checkpoints):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        (resume / f"step{step}.safetensors").replace(path)
    table = pd.DataFrame(rows_log, columns=LOG_COLUMNS)
    with atomic_path(log_table) as tmp:
        table.to_csv(tmp, index=False)
    fit.discard_state(state_path)
    remove_resume_dir(resume)
    model.network.eval()
    return table


def train_model(data_store: str, params: dict[str, Any], seed: int, checkpoints: list[str], log_table: str,
                resume_dir: str, device: str = "cpu") -> pd.DataFrame:
    """train_model: the full model (``pool == "full"``) or one subset model of a pool, of the
    configured family (a DDPM, or a LoRA on the base text-to-image pipeline)."""
    from diffattr.data.store import read_labels
    from diffattr.models.family import fresh_model
    from diffattr.subsets import subset_mask

    model = fresh_model(params, seed, device)
    inputs, cond = model.inputs(data_store, "train")
    if params["pool"] != "full":
        s = params["subsets"]
        mask = subset_mask(read_labels(data_store, "train"), s["alpha"], s["seed"], params["pool"], params["subset"],
                           s["stratify"], s.get("count"))
        inputs, cond = inputs[mask], None if cond is None else cond[mask]
    log.info("training %s subset %s seed %d on %d images", params["pool"], params["subset"], seed, len(inputs))
    return train(model, inputs, cond, params["train"], seed, checkpoints, log_table, resume_dir)
