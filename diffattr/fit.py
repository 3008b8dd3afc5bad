"""The one training engine: every optimiser loop of diffattr runs here.

DDPM and LoRA training — full, subset, ensemble, counterfactual and customization models
(:func:`diffattr.train.train`) — and both stages of the base pipeline's pretraining
(:mod:`diffattr.pretrain`) are :func:`fit` of a loss closure. Why one: pretraining had its own loop,
which could not resume and silently ran torch's AdamW defaults (weight decay 0.01, β = (0.9, 0.999))
instead of the config's optimiser (issue 15, item 3).

Step s (0-based) of a fit is, for the trainable parameters θ:

    ℓ_s = loss(draws(s))                 draws(s): every random draw of step s, a pure function of s
    η_s = learning_rate(s)               cosine with linear warm-up, or constant (FitSettings)
    g   = ∇_θ ℓ_s, clipped to ‖g‖₂ ≤ grad_clip (over all of θ; none when grad_clip is None)
    θ   ← AdamW(θ, g; η_s, β, ε, weight decay)

Because the draws are functions of s, a run killed at step s and resumed from its last saved state
produces bit-identical weights. The saved state (:func:`save_state`, safetensors, no pickle) holds θ,
AdamW's moments, the training-log rows so far and the loss sum of the open log window, so a resumed
run also writes the same log bytes. A log row (step, loss, lr) closes every ``log_every`` steps and
at the last step: ``loss`` is the mean of ℓ over the window, ``lr`` the window's last η.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file

from diffattr.models.checkpoint import save_safetensors
from diffattr.progress import progress
from diffattr.schedule import learning_rate

log = logging.getLogger(__name__)

D = TypeVar("D")

WEIGHT_DECAY = 1e-6
"""AdamW's weight decay unless a config says otherwise (docs/methods.md §3)."""
ADAM_BETAS = (0.95, 0.999)
"""AdamW's (β₁, β₂) unless a config says otherwise (docs/methods.md §3)."""
ADAM_EPS = 1e-8
"""AdamW's ε unless a config says otherwise."""

LOG_COLUMNS = ["step", "loss", "lr"]
"""Columns of the training-log rows: the step ending each window, its mean loss, the learning rate."""


@dataclass(frozen=True)
class FitSettings:
    """How :func:`fit` optimises: ``steps`` AdamW steps (``lr``, ``adam_betas``, ``adam_eps``,
    ``weight_decay``) with the cosine learning rate peaking at ``lr`` after a linear warm-up over
    ``warmup_fraction`` of the steps (None: constant ``lr``), gradient-norm clip ``grad_clip`` (None:
    none), the resume state saved every ``resume_every`` steps (and after the last one with
    ``save_final``), a log row every ``log_every`` steps.

    No field has a default but ``save_final``: every fit is made from a config block's settings
    (:func:`diffattr.train.fit_settings`, :func:`diffattr.pretrain.fit_settings`), whose dataclasses
    hold the defaults, so a second copy here could only disagree with them (issue 15, item 4)."""

    steps: int
    lr: float
    warmup_fraction: float | None
    weight_decay: float
    adam_betas: tuple[float, float]
    adam_eps: float
    grad_clip: float | None
    resume_every: int
    log_every: int
    save_final: bool = False

    def learning_rate(self, step: int) -> float:
        """η before optimiser step ``step``: :func:`diffattr.schedule.learning_rate`, or ``lr``."""
        if self.warmup_fraction is None:
            return self.lr
        return learning_rate(step, self.steps, self.lr, self.warmup_fraction)


def adamw(trainable: Mapping[str, torch.nn.Parameter], settings: FitSettings) -> torch.optim.AdamW:
    """AdamW over ``trainable`` (in its order) with the settings' β, ε and weight decay."""
    return torch.optim.AdamW(list(trainable.values()), lr=settings.lr, betas=settings.adam_betas,
                             eps=settings.adam_eps, weight_decay=settings.weight_decay)


def update(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, grad_clip: float | None) -> float:
    """One optimiser step on the scalar ``loss``: learning rate ``lr``, gradients cleared, ∇ of
    ``loss``, its global norm clipped to ``grad_clip`` (unless None), then ``opt.step()``; returns
    ``loss`` as a float."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], grad_clip)
    opt.step()
    return loss.item()


def save_state(path: Path, trainable: Mapping[str, torch.nn.Parameter], opt: torch.optim.Optimizer, step: int,
               key: str, log_rows: list[dict[str, float]], running: float) -> None:
    """Trainable weights, AdamW moments, the log rows so far and the loss sum of the open log
    window as safetensors (no pickle), atomically; ``key`` and ``step`` in its metadata."""
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in trainable.items()}
    tensors["log.rows"] = torch.tensor([[r[c] for c in LOG_COLUMNS] for r in log_rows], dtype=torch.float64
                                       ).reshape(-1, len(LOG_COLUMNS))
    tensors["log.running"] = torch.tensor([running], dtype=torch.float64)
    names = dict(enumerate(trainable))
    for index, state in opt.state_dict()["state"].items():
        for field, value in state.items():
            tensors[f"opt.{names[index]}.{field}"] = (torch.as_tensor(value).detach().clone().reshape(-1)
                                                      if field == "step" else value.detach().clone().contiguous())
    save_safetensors(tensors, path, {"step": str(step), "key": key})


def load_state(path: Path, trainable: Mapping[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
               key: str) -> tuple[int, list[dict[str, float]], float]:
    """Restore a state of :func:`save_state` into ``trainable`` and ``opt``; returns its step, log rows
    and open window's loss sum, or (0, [], 0.0) when absent, damaged or written for another ``key``."""
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


def make_resume_dir(path: Path, attempts: int = 100) -> None:
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


StepFn = Callable[[torch.optim.Optimizer, int], float]
"""One whole optimiser step s (its draws, loss and :func:`update`) given the optimiser; its loss."""
AfterStep = Callable[[int, float], None]
"""Called after each optimiser step with (steps done, that step's loss): checkpoints, progress lines."""


def fit(loss: Callable[[D], torch.Tensor], trainable: Mapping[str, torch.nn.Parameter], draws: Callable[[int], D],
        settings: FitSettings, state_path: Path, key: str, after_step: AfterStep | None = None,
        desc: str = "train") -> list[dict[str, float]]:
    """Minimise ``loss(draws(s))`` over ``trainable`` for steps s = 0 … steps − 1 (the module
    docstring's step), resuming from ``state_path`` when it holds a state written under ``key``;
    returns the log rows (:data:`LOG_COLUMNS`). The state is left in place: the caller removes it
    once its own results are written (:func:`discard_state`). ``desc`` names the progress bar."""
    def step(opt: torch.optim.Optimizer, s: int) -> float:
        return update(opt, loss(draws(s)), settings.learning_rate(s), settings.grad_clip)

    return fit_steps(step, trainable, settings, state_path, key, after_step, desc)


def fit_steps(step: StepFn, trainable: Mapping[str, torch.nn.Parameter], settings: FitSettings, state_path: Path,
              key: str, after_step: AfterStep | None = None, desc: str = "train") -> list[dict[str, float]]:
    """:func:`fit`'s loop around a whole step function ``step(opt, s)`` (which ends in :func:`update`):
    AdamW built here (:func:`adamw`), the state restored from and saved to ``state_path`` every
    ``resume_every`` steps (not after the last unless ``save_final``), log rows closed every
    ``log_every`` steps and at the last, progress on a bar named ``desc``
    (:func:`diffattr.progress.progress`). Returns the log rows."""
    opt = adamw(trainable, settings)
    make_resume_dir(state_path.parent)
    start, rows, running = load_state(state_path, trainable, opt, key)
    if start:
        log.info("resuming from step %d of %d (%s)", start, settings.steps, state_path)
    with progress(settings.steps, desc, "step", initial=start) as bar:
        for s in range(start, settings.steps):
            value = step(opt, s)
            running += value
            bar.update(1)
            done = s + 1
            if done % settings.log_every == 0 or done == settings.steps:
                span = done - (rows[-1]["step"] if rows else 0)
                rows.append({"step": done, "loss": running / span, "lr": opt.param_groups[0]["lr"]})
                running = 0.0
            if after_step is not None:
                after_step(done, value)
            last = done == settings.steps
            if (done % settings.resume_every == 0 and not last) or (settings.save_final and last):
                save_state(state_path, trainable, opt, done, key, rows, running)
    return rows


def discard_state(state_path: Path) -> None:
    """Remove a finished fit's resume state (absent is fine): call once its results are written."""
    state_path.unlink(missing_ok=True)
