"""One training loop for full, subset, ensemble and counterfactual DDPMs; resumable.

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
from safetensors.torch import load_file

from diffattr.atomic import atomic_path
from diffattr.models.checkpoint import save_safetensors
from diffattr.models.ddpm import add_noise, alphas_cumprod
from diffattr.models.family import Model, denoise, save_model
from diffattr.progress import progress
from diffattr.schedule import checkpoint_steps, learning_rate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` block of the config."""

    steps: int
    batch_size: int
    lr: float
    warmup_fraction: float = 0.1
    weight_decay: float = 1e-6
    adam_betas: tuple[float, float] = (0.95, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    hflip: bool = False
    checkpoint_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    resume_every: int = 100
    log_every: int = 50

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


def _optimizer(model: Model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only (a LoRA adapter's, or every DDPM weight)."""
    return torch.optim.AdamW(
        list(model.trainable().values()), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )


LOG_COLUMNS = ["step", "loss", "lr"]
"""Columns of the training-log table: the step ending each window, its mean loss, the learning rate."""


def _save_state(path: Path, model: Model, opt: torch.optim.Optimizer, step: int, key: str,
                log_rows: list[dict[str, float]], running: float) -> None:
    """Trainable weights, AdamW moments, the log rows so far and the loss sum of the open log
    window as safetensors (no pickle), atomically."""
    trainable = model.trainable()
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in trainable.items()}
    tensors["log.rows"] = torch.tensor([[r[c] for c in LOG_COLUMNS] for r in log_rows], dtype=torch.float64
                                       ).reshape(-1, len(LOG_COLUMNS))
    tensors["log.running"] = torch.tensor([running], dtype=torch.float64)
    names = dict(enumerate(trainable))
    for index, state in opt.state_dict()["state"].items():
        for field, value in state.items():
            tensors[f"opt.{names[index]}.{field}"] = torch.as_tensor(value).detach().clone().reshape(-1) if field == "step" else value.detach().clone().contiguous()
    save_safetensors(tensors, path, {"step": str(step), "key": key})


def _load_state(path: Path, model: Model, opt: torch.optim.Optimizer,
                key: str) -> tuple[int, list[dict[str, float]], float]:
    """Restore a saved state; returns its step, log rows and open window's loss sum, or
    (0, [], 0.0) when absent or written for another config."""
    if not path.exists():
        return 0, [], 0.0
    from safetensors import safe_open

    from diffattr.integrity import StoreError, check_safetensors

    try:
        check_safetensors(path)
    except StoreError as err:  # only a resume aid: training restarts, nothing finished is lost
        log.warning("ignoring resume state: %s", err)
        return 0, [], 0.0
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    if meta.get("key") != key:
        log.warning("ignoring resume state %s: it was written for a different configuration", path)
        return 0, [], 0.0
    tensors = load_file(str(path))
    if "log.rows" not in tensors:  # written before the log table was part of the state
        log.warning("ignoring resume state %s: it holds no training-log rows", path)
        return 0, [], 0.0
    trainable = model.trainable()
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(tensors[f"model.{name}"])
    index = {n: i for i, n in enumerate(trainable)}
    state: dict[int, dict[str, torch.Tensor]] = {}
    rows = [dict(zip(LOG_COLUMNS, (int(r[0]), *map(float, r[1:])))) for r in tensors["log.rows"].tolist()]
    for name, value in tensors.items():
        if name.startswith("opt."):
            pname, field = name[4:].rsplit(".", 1)
            state.setdefault(index[pname], {})[field] = value.reshape(()) if field == "step" else value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
    return int(meta["step"]), rows, float(tensors["log.running"][0])


RESUME_ROOT = "resume"
"""The name of the folder that holds every job's resume directory (the rules put them at
``{output_dir}/resume/{pool}/{subset}/seed{seed}``, ``…/resume/counterfactual/…``): the highest folder
a finished training removes when it is left empty."""


def _make_resume_dir(path: Path, attempts: int = 100) -> None:
    """``path`` and its parents, created; retried when a parent vanishes half-way (another job that
    just finished removed it while it was empty, :func:`remove_resume_dir`)."""
    for _ in range(attempts - 1):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    path.mkdir(parents=True, exist_ok=True)


def remove_resume_dir(path: Path) -> None:
    """Remove a finished training's (empty) resume directory ``path``, then each parent that is left
    empty, up to and including the nearest one named :data:`RESUME_ROOT` (just ``path`` if none is);
    stops at the first non-empty one (another job's progress), never removes one."""
    path.rmdir()  # it must be empty: its state and checkpoints were moved out or unlinked
    parents = list(path.parents)
    top = next((i for i, p in enumerate(parents) if p.name == RESUME_ROOT), None)
    if path.name == RESUME_ROOT or top is None:
        return
    for parent in parents[: top + 1]:
        try:
            parent.rmdir()
        except OSError:  # not empty (or already gone): the rest above it stays
            return


def _step(model: Model, opt: torch.optim.Optimizer, data: torch.Tensor, cond: torch.Tensor | None, cfg: TrainConfig,
          seed: int, step: int, abar: torch.Tensor) -> float:
    """One optimiser step of L_Simple on the step's seeded draws (rows, t, ε, flips); its loss."""
    draws = training_draws(len(data), cfg.batch_size, seed, step, len(abar), tuple(data.shape[1:]))
    rows = torch.from_numpy(draws.rows).to(data.device)
    x0 = data[rows]
    if cfg.hflip:
        x0 = torch.where(torch.from_numpy(draws.flips).to(data.device).view(-1, 1, 1, 1), x0.flip(-1), x0)
    t = torch.from_numpy(draws.timesteps).to(data.device)
    eps = torch.from_numpy(draws.noise).to(data.device)
    labels = None if cond is None else cond[rows]
    pred = denoise(model.network, add_noise(x0, eps, t, abar), t, labels)
    loss = torch.nn.functional.mse_loss(pred, eps)
    for group in opt.param_groups:
        group["lr"] = learning_rate(step, cfg.steps, cfg.lr, cfg.warmup_fraction)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], cfg.grad_clip)
    opt.step()
    return loss.item()


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
    opt = _optimizer(model, cfg)
    abar = alphas_cumprod(model.params["scheduler"])
    data = torch.from_numpy(inputs).to(model.device)
    labels = None if cond is None else torch.from_numpy(cond).to(model.device)
    resume = Path(resume_dir)
    _make_resume_dir(resume)
    key = json.dumps([model.params, train_config, seed, len(inputs)], sort_keys=True)
    state_path = resume / "state.safetensors"
    start, rows_log, running = _load_state(state_path, model, opt, key)
    if start:
        log.info("resuming from step %d of %d (%s)", start, cfg.steps, state_path)
    epoch_loss, last_line, t0 = 0.0, start, time.perf_counter()
    meta = {**model.params, "seed": seed, "n_train": len(inputs)}
    epochs = -(-cfg.steps * cfg.batch_size // len(inputs))
    with progress(cfg.steps, "train", "step", initial=start) as bar:
        for step in range(start, cfg.steps):
            loss = _step(model, opt, data, labels, cfg, seed, step, abar)
            running += loss
            epoch_loss += loss
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                span = done - (rows_log[-1]["step"] if rows_log else 0)
                rows_log.append({"step": done, "loss": running / span, "lr": opt.param_groups[0]["lr"]})
                running = 0.0
            epoch = done * cfg.batch_size // len(inputs)  # epochs completed (the last may be partial)
            boundary = epoch > step * cfg.batch_size // len(inputs)
            if boundary or done == cfg.steps:
                log.info("epoch %d/%d (step %d/%d): loss %.4f, %.1f steps/s", epoch if boundary else epochs, epochs,
                         done, cfg.steps,
                         epoch_loss / (done - last_line), (done - start) / (time.perf_counter() - t0))
                epoch_loss, last_line = 0.0, done
            if done in steps_to_save:
                save_model(model, str(resume / f"step{done}.safetensors"), {**meta, "step": done})
            if done % cfg.resume_every == 0 and done < cfg.steps:
                _save_state(state_path, model, opt, done, key, rows_log, running)
    for step, path in zip(steps_to_save, checkpoints):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        (resume / f"step{step}.safetensors").replace(path)
    table = pd.DataFrame(rows_log, columns=LOG_COLUMNS)
    with atomic_path(log_table) as tmp:
        table.to_csv(tmp, index=False)
    state_path.unlink(missing_ok=True)
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
