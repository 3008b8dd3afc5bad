"""K-FAC / EK-FAC influence for diffusion models (docs/methods.md §2.9, Mlodozeniec et al., ICLR 2025).

Score (sign: positive = z helps x, i.e. lowers its measurement; the same convention as TRAK in
:mod:`diffattr.methods.trak`)::

    τ(x, z) = ∇_θ m(x)ᵀ (Ĝ + λI)⁻¹ ∇_θ L(z)

* ``L(z) = (1/D) Σ_d ℓ(z, t_d, ε_d)``, ℓ = L_Simple = mean over the output dimensions of
  (ε_θ(x_t, t) − ε)² (docs/methods.md §0), averaged over D (t, ε) draws per training sample.
* ``m(x) = (1/D') Σ_d F(x, t_d, ε_d)`` with F the measurement: ``loss`` (L_Simple), ``square``
  (mean ε_θ², D-TRAK's L_Square) or ``elbo`` (w_t·L_Simple, w_t = β_t / (2α_t(1−ᾱ_t)), docs/methods.md §1).
* Ĝ approximates the Gauss-Newton matrix of the training loss averaged over data, t and ε,
  G = E_{z,t,ε}[Jᵀ ∇²_out ℓ J] with ∇²_out ℓ = (2/d)·I (d = C·H·W). Every (z, t, ε) draw is one
  "example" of the curvature. With ``fisher="mc"`` (default, Mlodozeniec's ``fisher_type="mc"``,
  one sample) the pseudo-gradient at the network output is s = sqrt(2/d)·n with n ~ N(0, I), so
  E[Jᵀs sᵀJ] = G exactly; ``fisher="empirical"`` uses the real L_Simple gradient instead.
  Strategies (per ``nn.Linear`` / ``nn.Conv2d`` layer, block-diagonal across layers — only these
  layers' parameters enter the score, e.g. GroupNorm affine parameters do not):
  ``ekfac`` (Kronecker eigenbasis of A = E[aaᵀ], S = E[ssᵀ], with eigenvalues re-fitted as
  E[(Q_Sᵀ g Q_A)²] on per-draw gradients g, George et al. 2018), ``kfac`` (eigenvalues of A ⊗ S),
  ``diagonal`` (E[g²]) and ``identity`` (no preconditioner: the plain gradient dot product
  ∇m(x)ᵀ∇L(z), damping unused).
* Damping: ``damping_mode="relative"`` (default) uses one scalar λ = ``damping`` × (mean eigenvalue of
  Ĝ over all tracked parameters) = ``damping``·tr(Ĝ)/p; ``"absolute"`` uses λ = ``damping``. λ is
  added to every eigenvalue in the (E)K-FAC eigenbasis (Mlodozeniec's ``use_exact_damping``).
  Caveat of the ``kfac`` strategy (engine behaviour): for ``Conv2d`` A and S are averaged over batch
  *and* spatial locations, so the K-FAC eigenvalues of a conv layer are not multiplied by the number
  of locations; EK-FAC's eigenvalues are fitted to the real per-draw gradients and have no such issue.

Engine: ``kronfluence`` 1.0.1 (factor fitting, eigendecompositions, preconditioning and pairwise
scores). Its per-sample rows are batch rows; we fold the D draws of a sample into the batch as D
consecutive rows and (i) fit the curvature on those per-draw rows, (ii) for train and query gradients
average each sample's D rows back into one per-sample gradient in the task's
``post_process_per_sample_gradient`` hook, so kronfluence returns one row/column per *sample*
(PEERS.md §5: without this, the folded draws come back as separate rows).

Determinism: every t and ε is a pure function of (seed, split, sample id, t) via
:func:`diffattr.noise.sample_timesteps` and :func:`diffattr.noise.gaussian_noise`, so results do not
depend on batch size or order. Splits: training-gradient draws use ``"train"`` (the featurizer's
split, so with equal seed and timestep strategy they are the TRAK features' draws); query draws use
the query set's name; the curvature fit uses :data:`FIT_SPLIT` and its Monte-Carlo pseudo-targets
:data:`FISHER_SPLIT` (independent of the gradient draws). Query sets must therefore not be named
like those two (split codes hash the first 7 bytes of the name, :func:`diffattr.noise.split_code`).
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import time
import warnings
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.module.tracked_module import TrackedModule
from kronfluence.task import Task

from diffattr.methods.registry import ScoreBlocks, ScoreContext, method_settings
from diffattr.models.ddpm import noisy_draws
from diffattr.noise import gaussian_noise, sample_timesteps
from diffattr.outputs import l_simple, output_values

log = logging.getLogger(__name__)

STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")
MEASUREMENTS = {"loss": "loss", "square": "square", "elbo": "weighted_mse"}
"""Measurement name → :func:`diffattr.outputs.output_function` name."""
FIT_SPLIT = "kfacfit"
"""Noise/timestep split of the curvature-fit draws (train sample ids)."""
FISHER_SPLIT = "kfacmc"
"""Noise split of the Monte-Carlo Fisher pseudo-targets n (train sample ids, fit timesteps)."""
TRAIN_SPLIT = "train"

_FACTORS = "factors"
_SCORES = "scores"


@dataclass(frozen=True)
class EkfacConfig:
    """Settings of :func:`ekfac_scores` (docs/methods.md §2.9).

    ``batch_size`` counts *samples*; each forward pass runs ``batch_size × draws`` rows.
    ``queries_per_pass`` bounds how many preconditioned query gradients are held at once
    (``queries_per_pass × p × 4`` bytes for p tracked parameters); the engine recomputes all train
    gradients once per pass. ``query_low_rank``: keep a rank-r SVD of each layer's preconditioned query
    gradient (kronfluence's query batching; an approximation, ``None`` = exact).
    ``modules``: names of the ``nn.Linear``/``nn.Conv2d`` modules to track (``None``: all of them).
    ``timestep_strategy``: ``random`` (t ~ U{0..T−1} per draw, Mlodozeniec's choice), ``uniform`` or
    ``cumulative`` (the shared sets of :func:`diffattr.noise.timestep_set`).
    """

    strategy: str = "ekfac"
    damping: float = 0.1
    damping_mode: str = "relative"
    fisher: str = "mc"
    fit_draws: int = 8
    train_draws: int = 8
    query_draws: int = 8
    timestep_strategy: str = "random"
    measurement: str = "loss"
    batch_size: int = 32
    queries_per_pass: int = 256
    query_low_rank: int | None = None
    seed: int = 0
    modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if self.measurement not in MEASUREMENTS:
            raise ValueError(f"unknown measurement {self.measurement!r}; choose one of {tuple(MEASUREMENTS)}")
        if self.damping_mode not in ("relative", "absolute"):
            raise ValueError(f"damping_mode must be 'relative' or 'absolute', not {self.damping_mode!r}")
        if self.fisher not in ("mc", "empirical"):
            raise ValueError(f"fisher must be 'mc' or 'empirical', not {self.fisher!r}")
        if self.strategy != "identity" and not self.damping > 0:
            raise ValueError(f"damping must be > 0 for strategy {self.strategy!r} (got {self.damping})")
        if self.query_low_rank is not None and self.query_low_rank < 1:
            raise ValueError(f"query_low_rank must be None or >= 1 (got {self.query_low_rank})")
        for name in ("fit_draws", "train_draws", "query_draws", "batch_size", "queries_per_pass"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> EkfacConfig:
        """From a config block; unknown keys raise (e.g. a method block's ``kind`` must be removed first)."""
        cfg = method_settings(cls, cfg, "EkfacConfig")
        if cfg.get("modules") is not None:
            cfg["modules"] = tuple(cfg["modules"])
        return cls(**cfg)


class DrawTask(Task):
    """A kronfluence task whose dataset items are samples with D draws each, folded into the batch.

    Subclasses turn a batch of B items into B·D rows (sample-major: row b·D + d is draw d of item b)
    and implement the per-row loss, measurement and Monte-Carlo Fisher pseudo-loss. While
    :attr:`fitting` is true every row is its own curvature example; otherwise per-row gradients are
    averaged over each item's D rows, giving ∇L(z) = (1/D) Σ_d ∇ℓ_d and ∇m(x) = (1/D) Σ_d ∇F_d.
    """

    enable_post_process_per_sample_gradient = True

    def __init__(self) -> None:
        self.fitting = True
        self._group = 1

    @abstractmethod
    def draws(self, batch: Any) -> int:
        """D, the number of rows each item of ``batch`` expands to."""

    @abstractmethod
    def row_losses(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
        """(B·D,) training losses ℓ of the rows."""

    @abstractmethod
    def row_measurements(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
        """(B·D,) measurements F of the rows."""

    @abstractmethod
    def fisher_loss(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
        """Scalar Σ_rows ⟨out, s⟩ with s a fixed pseudo-gradient, E[ssᵀ] = ∇²_out ℓ."""

    def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
        self._group = 1 if self.fitting else self.draws(batch)
        if sample:
            return self.fisher_loss(batch, model)
        return self.row_losses(batch, model).sum()

    def compute_measurement(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
        self._group = self.draws(batch)
        return self.row_measurements(batch, model).sum()

    def post_process_per_sample_gradient(self, module_name: str, gradient: torch.Tensor) -> torch.Tensor:
        del module_name
        if self._group == 1:
            return gradient
        return gradient.reshape(-1, self._group, *gradient.shape[1:]).mean(dim=1)


class DiffusionTask(DrawTask):
    """ε-prediction DDPM rows: x_t = sqrt(ᾱ_t)x₀ + sqrt(1−ᾱ_t)ε, out = ε_θ(x_t, t).sample.

    Items are dicts with ``x0`` (C, H, W), ``t`` (D,), ``eps`` (D, C, H, W) and, for the Monte-Carlo
    curvature fit, ``probe`` (D, C, H, W) ~ N(0, I): the pseudo-gradient is s = sqrt(2/d)·probe.
    """

    def __init__(self, abar: torch.Tensor, betas: torch.Tensor, measurement: str,
                 modules: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.abar, self.betas = abar, betas
        self.output = MEASUREMENTS[measurement]
        self.modules = modules

    def get_influence_tracked_modules(self) -> list[str] | None:
        return list(self.modules) if self.modules is not None else None

    def draws(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["t"].shape[1])

    def _rows(self, batch: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        x_t, t, eps = noisy_draws(batch["x0"], batch["t"], batch["eps"], self.abar)
        return model(x_t, t).sample, eps, t

    def row_losses(self, batch: dict[str, torch.Tensor], model: torch.nn.Module) -> torch.Tensor:
        pred, eps, _ = self._rows(batch, model)
        return l_simple(pred, eps)

    def row_measurements(self, batch: dict[str, torch.Tensor], model: torch.nn.Module) -> torch.Tensor:
        pred, eps, t = self._rows(batch, model)
        return output_values(self.output, pred, eps, t, self.betas, self.abar)

    def fisher_loss(self, batch: dict[str, torch.Tensor], model: torch.nn.Module) -> torch.Tensor:
        pred, _, _ = self._rows(batch, model)
        probe = batch["probe"].reshape(pred.shape)
        scale = math.sqrt(2.0 / pred[0].numel())
        return (pred * probe.detach()).sum() * scale


class DrawDataset(torch.utils.data.Dataset):
    """Samples of ``images`` with ``count`` deterministic (t, ε) draws each (see module docstring)."""

    def __init__(self, images: np.ndarray, sample_ids: np.ndarray, split: str, count: int, cfg: EkfacConfig,
                 num_timesteps: int, probe: bool = False) -> None:
        if len(images) != len(sample_ids):
            raise ValueError(f"{len(images)} images but {len(sample_ids)} sample ids")
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.ids = np.asarray(sample_ids, dtype=np.int64)
        self.split, self.count, self.cfg, self.num_t, self.probe = split, count, cfg, num_timesteps, probe

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, shape = self.ids[i : i + 1], self.images.shape[1:]
        ts = sample_timesteps(self.cfg.timestep_strategy, self.count, self.num_t, self.cfg.seed, self.split, ids)
        item = {
            "x0": torch.from_numpy(self.images[i]),
            "t": torch.from_numpy(ts[0]),
            "eps": torch.from_numpy(gaussian_noise(self.cfg.seed, self.split, ids, ts, shape)[0]),
        }
        if self.probe:
            item["probe"] = torch.from_numpy(gaussian_noise(self.cfg.seed, FISHER_SPLIT, ids, ts, shape)[0])
        return item


def mean_eigenvalue(factors: dict[str, dict[str, torch.Tensor]], strategy: str) -> float:
    """tr(Ĝ)/p over all tracked layers: the mean of Ĝ's eigenvalues (kronfluence factor layout)."""
    total, count = 0.0, 0
    if strategy in ("ekfac", "diagonal"):
        for name, lam in factors["lambda_matrix"].items():
            total += float(lam.double().sum() / factors["num_lambda_processed"][name].double().sum())
            count += lam.numel()
    elif strategy == "kfac":
        for name, ea in factors["activation_eigenvalues"].items():
            es = factors["gradient_eigenvalues"][name]
            total += float(ea.double().sum() * es.double().sum())
            count += ea.numel() * es.numel()
    else:
        raise ValueError(f"strategy {strategy!r} has no eigenvalues")
    return total / count


RESULT_FACTS = ("damping", "tracked_parameters")
"""The run facts of :func:`influence_scores` that describe the result (a score store's attrs); its
timings only go to the job's log."""


def influence_scores(model: torch.nn.Module, task: DrawTask, fit_data: torch.utils.data.Dataset,
                     train_data: torch.utils.data.Dataset, query_data: torch.utils.data.Dataset,
                     cfg: EkfacConfig, workdir: str, device: str = "cpu") -> tuple[np.ndarray, dict[str, Any]]:
    """(n_query × n_train) float32 τ = ∇m(x)ᵀ(Ĝ + λI)⁻¹∇L(z) through kronfluence, and run facts.

    Ĝ is fitted on ``fit_data`` (one curvature example per row), ∇L on ``train_data`` and ∇m on
    ``query_data``. ``model`` is copied, never modified. ``workdir`` receives the factor and score
    files (overwritten on every call). The facts: ``damping`` (the absolute λ used),
    ``tracked_parameters`` (p, the parameters of the tracked layers) — :data:`RESULT_FACTS`, which a
    score store records — and the wall times ``fit_seconds``, ``score_seconds`` (also logged; a
    result file holds no wall time, README "Guarantees").
    """
    model = prepare_model(copy.deepcopy(model).to(device).eval(), task)
    # kronfluence calls gc.collect() between stages (≈0.5 s each in a large process); objects that
    # exist before the call are frozen out of those collections and unfrozen at the end.
    gc.freeze()
    try:
        return _run_engine(model, task, fit_data, train_data, query_data, cfg, workdir, device)
    finally:
        gc.unfreeze()


def _run_engine(model: torch.nn.Module, task: DrawTask, fit_data: torch.utils.data.Dataset,
                train_data: torch.utils.data.Dataset, query_data: torch.utils.data.Dataset,
                cfg: EkfacConfig, workdir: str, device: str) -> tuple[np.ndarray, dict[str, Any]]:
    tracked = sum(p.numel() for m in model.modules() if isinstance(m, TrackedModule)
                  for p in m.original_module.parameters())
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.cuda.amp.GradScaler on CPU
        warnings.filterwarnings("ignore", message=".*GradScaler.*")
        analyzer = Analyzer("ekfac", model, task, cpu=torch.device(device).type == "cpu",
                            log_level=logging.WARNING, disable_tqdm=True, output_dir=workdir)
        factor_args = FactorArguments(strategy=cfg.strategy, use_empirical_fisher=cfg.fisher == "empirical",
                                      covariance_max_examples=None, lambda_max_examples=None)
        task.fitting = True
        analyzer.fit_all_factors(_FACTORS, fit_data, per_device_batch_size=cfg.batch_size,
                                 factor_args=factor_args, overwrite_output_dir=True)
        damping = 0.0
        if cfg.strategy != "identity":
            damping = cfg.damping
            if cfg.damping_mode == "relative":
                damping *= mean_eigenvalue(analyzer.load_all_factors(_FACTORS), cfg.strategy)
            if not damping > 0:
                raise ValueError(f"damping λ = {damping} is not positive (all-zero curvature?)")
        fitted = time.perf_counter()
        query_batch = min(cfg.batch_size, cfg.queries_per_pass, max(len(query_data), 1))
        score_args = ScoreArguments(damping_factor=damping, query_gradient_low_rank=cfg.query_low_rank,
                                    query_gradient_accumulation_steps=max(1, cfg.queries_per_pass // query_batch))
        task.fitting = False
        analyzer.compute_pairwise_scores(_SCORES, _FACTORS, query_dataset=query_data, train_dataset=train_data,
                                         per_device_query_batch_size=query_batch,
                                         per_device_train_batch_size=cfg.batch_size, score_args=score_args,
                                         overwrite_output_dir=True)
        scores = analyzer.load_pairwise_scores(_SCORES)["all_modules"]
    info = {"damping": float(damping), "tracked_parameters": int(tracked), "fit_seconds": fitted - start,
            "score_seconds": time.perf_counter() - fitted}
    log.info("EK-FAC (%s, %d tracked parameters): factors fitted in %.1f s, scores in %.1f s", cfg.strategy,
             tracked, info["fit_seconds"], info["score_seconds"])
    return scores.float().cpu().numpy(), info


def ekfac_scores(unet: torch.nn.Module, scheduler: Any, train_images: np.ndarray, queries: dict[str, np.ndarray],
                 cfg: EkfacConfig, workdir: str, device: str = "cpu", *, train_ids: np.ndarray | None = None,
                 query_ids: dict[str, np.ndarray] | None = None, info: dict[str, Any] | None = None,
                 ) -> dict[str, np.ndarray]:
    """Per query set, the (n_queries × n_train) float32 matrix τ(x, z) = ∇m(x)ᵀ(Ĝ + λI)⁻¹∇L(z).

    Images are float (n, C, H, W) in [−1, 1]. ``train_ids`` / ``query_ids`` are the sample ids that
    seed each sample's draws (default: row numbers); pass the rows' ids in their split when scoring a
    slice, so the draws match the full run. All query sets share one pass over the train gradients.
    ``info``, if given, receives the run facts of :func:`influence_scores` (λ, p, timings).
    """
    if not queries:
        return {}
    if sum(len(q) for q in queries.values()) == 0:
        return {s: np.zeros((0, len(train_images)), dtype=np.float32) for s in queries}
    abar = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    betas = scheduler.betas.to(device=device, dtype=torch.float32)
    num_t = len(abar)
    train_ids = np.arange(len(train_images)) if train_ids is None else np.asarray(train_ids)
    query_ids = query_ids or {}
    fit = DrawDataset(train_images, train_ids, FIT_SPLIT, cfg.fit_draws, cfg, num_t, probe=cfg.fisher == "mc")
    train = DrawDataset(train_images, train_ids, TRAIN_SPLIT, cfg.train_draws, cfg, num_t)
    names = list(queries)
    parts = [DrawDataset(queries[s], np.asarray(query_ids.get(s, np.arange(len(queries[s])))), s,
                         cfg.query_draws, cfg, num_t) for s in names]
    task = DiffusionTask(abar, betas, cfg.measurement, cfg.modules)
    scores, facts = influence_scores(unet, task, fit, train, torch.utils.data.ConcatDataset(parts), cfg, workdir,
                                     device)
    if info is not None:
        info.update(facts)
    out, start = {}, 0
    for name, part in zip(names, parts):
        out[name] = np.ascontiguousarray(scores[start : start + len(part)], dtype=np.float32)
        start += len(part)
    return out


def ekfac_method_scores(ctx: ScoreContext) -> ScoreBlocks:
    """Registry scorer: (E)K-FAC influence of the full model's training images on one attributed
    set. Inputs ``checkpoint``, ``data`` (and ``generated``); settings: the :class:`EkfacConfig`
    fields; the model's ``unet`` / ``scheduler``."""
    import tempfile

    from diffattr.data.store import read_images, to_model_range
    from diffattr.jobs import device
    from diffattr.methods.similarity import query_images
    from diffattr.models.ddpm import build_scheduler, load_unet

    cfg, query_set = EkfacConfig.from_dict(ctx.settings), ctx.query_set
    model = load_unet(ctx.inputs.checkpoint, ctx.model["unet"], device())
    train = to_model_range(read_images(ctx.inputs.data, "train"))
    queries = {query_set: to_model_range(query_images(ctx.inputs, query_set))}
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ekfac-") as workdir:
        scores = ekfac_scores(model, build_scheduler(ctx.model["scheduler"]), train, queries, cfg, workdir, device(),
                              info=info)[query_set]
    attrs = {"strategy": cfg.strategy, "damping_setting": cfg.damping, **{k: info[k] for k in RESULT_FACTS}}
    return ScoreBlocks.from_matrix(scores, attrs)
