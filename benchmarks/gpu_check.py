"""One-shot GPU acceptance check (issue 17, item 4): one command, one Markdown table, one JSON file.

    benchmarks/gpu_check.sh                         # on a GPU machine: about 3–6 minutes on one H100/H200
    benchmarks/gpu_check.sh --device cpu --tiny     # the same code at toy sizes on the CPU (CI: it must not rot)

Why it exists: no CUDA path of diffattr had ever run when it was written (a GPU is lent to us for
minutes at a time), so everything a GPU run must show is prepared here as one script:

1. **twins** on the smoke-sized model (config.yaml + config/smoke.yaml, the 164 k-parameter digits
   UNet): diffattr's own functions with ``device=cuda`` against ``device=cpu`` — the projection's
   hash integers (identical), its Gaussian entries, per-sample features, the kernel factor and TRAK
   scores (each within a tolerance stated next to it, with its reason). Under ``--device cpu`` both
   sides run on the CPU: the integer rows then compare torch's int32 hash (the CUDA code) with
   numpy's, the others are 0 by construction and only keep the script from rotting; two reference
   rows (bf16 vs fp32 projection on one device) show the size of a bf16 difference either way;
2. **throughput** of featurization on the CIFAR-sized UNet (≈36 M parameters, config/cifar2.yaml) at
   K = 10, k = 4096, bf16 projection, through :mod:`benchmarks.featurize`'s own runners, vs traker
   on the same model and batch; peak GPU memory; the projection's share of featurization time; and
   featurization time against a plain forward+backward of the same batch (the roofline);
3. **end to end**: random 32×32 RGB images in an ``image_folder`` layout, a few subset models, tiny
   steps, through the workflow (Snakemake, ``resources.gpus: 1``) on the device, with its wall time
   and the rows of its LDS table.

Exit status: 0 when every twin row is within its tolerance, 1 when one is not, 2 for bad input (one
sentence, before any compute). Targets (≥ 2× traker, …) are reported, not enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # featurize.py's runners (run as a script, not a package)

COLUMNS = ("part", "check", "measured", "limit", "ok", "why")
"""The Markdown table's columns; the JSON rows carry the same keys (``measured``/``limit`` as numbers)."""
LAMBDA = 0.1
"""λ (relative to the mean diagonal of ΦᵀΦ, diffattr/kernel.py) of the kernel and score twins: mid-grid."""


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: ``FULL`` on a GPU, ``TINY`` in CI (seconds on one CPU thread)."""

    twin_train: int
    twin_queries: int
    twin_timesteps: int
    twin_dim: int
    twin_rows: int  # projection rows checked in each of three ranges (start, end, around 2³¹)
    bench_model: str  # a name in benchmarks/featurize.py's MODELS
    bench_samples: int
    bench_batch: int
    bench_timesteps: int
    bench_dim: int
    e2e_unet: str  # "cifar": config/cifar2.yaml's UNet; "small": two 8/16-channel levels
    e2e_per_class: int
    e2e_timeout: int


FULL = Sizes(twin_train=300, twin_queries=40, twin_timesteps=10, twin_dim=256, twin_rows=8192,
             bench_model="cifar", bench_samples=256, bench_batch=64, bench_timesteps=10, bench_dim=4096,
             e2e_unet="cifar", e2e_per_class=60, e2e_timeout=240)
TINY = Sizes(twin_train=48, twin_queries=8, twin_timesteps=2, twin_dim=32, twin_rows=512,
             bench_model="digits", bench_samples=8, bench_batch=4, bench_timesteps=2, bench_dim=64,
             e2e_unet="small", e2e_per_class=30, e2e_timeout=240)
SMALL_UNET = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
              "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}


class CheckError(ValueError):
    """Bad input to the check, stated in one sentence."""


# ---------------------------------------------------------------- rows and the table


def row(part: str, check: str, measured: float | None, limit: float | None = None, op: str | None = None,
        why: str = "", unit: str = "") -> dict[str, Any]:
    """One table row; ``ok`` is whether ``measured op limit`` holds (None without a limit)."""
    ok = None
    if measured is not None and limit is not None:
        ok = bool(measured <= limit) if op == "<=" else bool(measured >= limit)
    return {"part": part, "check": check, "measured": measured, "unit": unit, "limit": limit, "op": op, "ok": ok,
            "why": why}


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    text = f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.2e}"
    return f"{text} {unit}".strip()


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    """The rows as one Markdown table under a one-line header."""
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        limit = "–" if r["limit"] is None else f"{r['op']} {_number(r['limit'], r['unit'])}"
        ok = {None: "", True: "yes", False: "**NO**"}[r["ok"]]
        cells = [r["part"], r["check"], _number(r["measured"], r["unit"]), limit, ok, r["why"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def twins_ok(rows: list[dict[str, Any]]) -> bool:
    """Whether every twin row with a tolerance is within it."""
    return all(r["ok"] is not False for r in rows if r["part"] == "twins")


# ---------------------------------------------------------------- twins: differences


def relative_row_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max over rows of ‖ours − reference‖₂ / ‖reference‖₂ (fp64; a zero reference row counts its raw norm)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    diff = np.linalg.norm(ours - reference, axis=-1)
    scale = np.linalg.norm(reference, axis=-1)
    return float(np.max(diff / np.where(scale > 0, scale, 1.0))) if diff.size else 0.0


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """‖ours − reference‖_F / ‖reference‖_F (fp64)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-300))


def hash_words(signs: np.ndarray) -> np.ndarray:
    """(rows, 32·m) ±1 Rademacher entries → (rows, m) uint32 hash words: bit b of word j is column
    32·j + b (diffattr.projection's layout). Word j of row i is h(key_i ⊕ col_j), the same integer that
    gives the Gaussian entry P[i, j], so a 32·k-column Rademacher block exposes a k-column Gaussian
    block's integers through the public block functions."""
    bits = np.asarray(signs).reshape(len(signs), -1, 32) > 0
    packed = np.packbits(bits, axis=-1, bitorder="little")  # (rows, m, 4) bytes, least significant first
    return packed.view("<u4").reshape(len(signs), -1).astype(np.uint32)


def projection_ranges(n_params: int, rows: int) -> list[tuple[int, int]]:
    """Row ranges checked: the first and last ``rows`` parameters and ``rows`` around 2³¹ (where the
    int32 CUDA hash wraps)."""
    edge = 1 << 31
    return [(0, min(rows, n_params)), (max(0, n_params - rows), n_params), (edge - rows // 2, edge + rows // 2)]


def projection_twins(device: str, n_params: int, k: int, rows: int, seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """The hash integers of ``block_torch`` on ``device`` against ``block_numpy`` (exact), and the
    Gaussian entries (Φ⁻¹ of the same integer, evaluated by each device's ``ndtri``)."""
    from diffattr.projection import block_numpy, block_torch

    mismatches = total = 0
    worst = 0.0
    for seed in seeds:
        for start, stop in projection_ranges(n_params, rows):
            ours = hash_words(block_torch("rademacher", seed, start, stop, 32 * k, device).cpu().numpy())
            ref = hash_words(block_numpy("rademacher", seed, start, stop, 32 * k).numpy())
            mismatches += int((ours != ref).sum())
            total += ref.size
            g = block_torch("gaussian", seed, start, stop, k, device).cpu().numpy()
            worst = max(worst, float(np.abs(g - block_numpy("gaussian", seed, start, stop, k).numpy()).max()))
    where = f"{total} integers: seeds {list(seeds)}, rows {projection_ranges(n_params, rows)}, k = {k}"
    return [
        row("twins", f"projection hash integers, {device} torch vs cpu numpy (mismatches)", mismatches, 0, "<=",
            f"exact: the same counter-based hash on both; {where}"),
        row("twins", f"projection Gaussian entries P, {device} vs cpu (max abs diff)", worst, 1e-5, "<=",
            "Φ⁻¹ of the same 24-bit u on each device's ndtri: a few fp32 ulps (ulp = 4.8e-7 at |P| = 4)"),
    ]


# ---------------------------------------------------------------- twins: features, kernel, scores


def smoke_config() -> dict[str, Any]:
    """config.yaml with config/smoke.yaml layered over it (as Snakemake layers them)."""
    from diffattr.cli import merge_configs
    from diffattr.config import read_config_file

    return merge_configs(read_config_file(REPO / "config.yaml"), read_config_file(REPO / "config/smoke.yaml"))


@contextlib.contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """cuDNN and cuBLAS TF32 on/off inside the block (None: torch's defaults — convolutions TF32 on)."""
    import torch

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def twin_inputs(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """n random images in [−1, 1] (the network's input range), float32."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def spec_features(config: dict[str, Any], spec: dict[str, Any], images: np.ndarray, split: str, device: str,
                  dtype: str, tf32_mode: bool | None) -> np.ndarray:
    """diffattr.featurize.featurize of a freshly seeded smoke UNet (same weights on every call) on ``device``."""
    import torch

    from diffattr.featurize import FeatureSpec, featurize
    from diffattr.models.ddpm import build_scheduler, build_unet

    torch.manual_seed(0)
    model = build_unet(config["model"]["unet"])
    feature_spec = FeatureSpec.from_dict({**spec, "projection": {**spec["projection"], "dtype": dtype}})
    with tf32(tf32_mode):
        return featurize(model, images, np.arange(len(images)), split, feature_spec,
                         build_scheduler(config["model"]["scheduler"]), device)


def feature_store(folder: Path, features: np.ndarray) -> Any:
    """The features as a consolidated diffattr feature store (one shard, then gathered)."""
    from diffattr.store import FeatureStore, gather_features, write_shard

    folder.mkdir(parents=True, exist_ok=True)
    write_shard(folder / "shard.zarr", features, 0, len(features), "gpu-check")
    gather_features([str(folder / "shard.zarr")], [(0, len(features))], "gpu-check", folder / "store.zarr")
    return FeatureStore(folder / "store.zarr")


def trak_scores(train: Any, queries: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(Cholesky factor of the Gram + λI, TRAK scores τ) with the kernel solves on ``device``; the Gram
    itself is fp64 numpy (diffattr.kernel: gram_partial / dual_gram), the same on either device."""
    import torch

    from diffattr.kernel import Kernel, dual_gram, gram_partial, scores_block
    from diffattr.store import kernel_form

    n, k = train.shape
    form = kernel_form(n, k)
    gram = gram_partial(train.read()) if form == "primal" else dual_gram(train)
    kernel = Kernel(form, torch.from_numpy(gram).to(device), n, k, float(np.trace(gram)))
    factor = kernel.factor(LAMBDA)
    return factor.cpu().numpy(), scores_block(kernel, factor, train, queries)


def feature_twins(device: str, sizes: Sizes, tmp: Path) -> list[dict[str, Any]]:
    """Features (three device settings and a bf16 reference), the kernel factor and TRAK scores."""
    config = smoke_config()
    spec = {**config["features"]["loss"], "timesteps": sizes.twin_timesteps,
            "projection": {**config["features"]["loss"]["projection"], "dim": sizes.twin_dim}}
    unet = config["model"]["unet"]
    shape = (unet["in_channels"], unet["sample_size"], unet["sample_size"])
    train_x, query_x = twin_inputs(sizes.twin_train, shape, 1), twin_inputs(sizes.twin_queries, shape, 2)

    def both(dev: str, dtype: str, mode: bool | None) -> tuple[np.ndarray, np.ndarray]:
        return (spec_features(config, spec, train_x, "train", dev, dtype, mode),
                spec_features(config, spec, query_x, "val", dev, dtype, mode))

    cpu32, cpu16 = both("cpu", "float32", None), both("cpu", "bfloat16", None)
    strict, default32, default16 = both(device, "float32", False), both(device, "float32", None), both(device, "bfloat16", None)
    n, k, K = sizes.twin_train + sizes.twin_queries, sizes.twin_dim, sizes.twin_timesteps
    what = f"{n} samples, K = {K}, k = {k}; max over samples of ‖Δφ‖/‖φ‖"

    def err(a: tuple, b: tuple) -> float:
        return max(relative_row_error(a[0], b[0]), relative_row_error(a[1], b[1]))

    rows = [
        row("twins", f"features, fp32 projection, TF32 off, {device} vs cpu", err(strict, cpu32), 1e-4, "<=",
            f"fp32 throughout, only summation order differs (≈1e-6); {what}"),
        row("twins", f"features, fp32 projection, torch defaults, {device} vs cpu", err(default32, cpu32), 1e-2, "<=",
            "torch's default runs CUDA convolutions in TF32 (10-bit mantissa, 2⁻¹¹ ≈ 4.9e-4 per operand), "
            "compounded through forward and backward"),
        row("twins", f"features, bf16 projection (the default spec's), {device} vs cpu", err(default16, cpu16), 1e-2,
            "<=", "bf16 output rounding (2⁻⁹ ≈ 2e-3 per entry) with a different summation order, plus TF32"),
        row("twins", "(reference) features, bf16 vs fp32 projection, both cpu", err(cpu16, cpu32), 1e-2, "<=",
            "what bf16 costs on one device: g, P and φ rounded to 8-bit mantissas"),
    ]
    stores = {name: feature_store(tmp / name, feats[0]) for name, feats in
              (("cpu32", cpu32), ("cpu16", cpu16), ("dev16", default16))}
    factor_cpu, scores_cpu = trak_scores(stores["cpu32"], cpu32[1], "cpu")
    factor_dev, scores_dev = trak_scores(stores["cpu32"], cpu32[1], device)
    _, scores_cpu16 = trak_scores(stores["cpu16"], cpu16[1], "cpu")
    _, scores_dev16 = trak_scores(stores["dev16"], default16[1], device)
    lam = f"λ = {LAMBDA:g} (relative)"
    rows += [
        row("twins", f"kernel Cholesky factor of ΦᵀΦ + λI, {device} vs cpu, same Φ (‖ΔL‖/‖L‖)",
            relative_error(factor_dev, factor_cpu), 1e-10, "<=", f"fp64 factorisation (ε = 2.2e-16) × its condition; {lam}"),
        row("twins", f"TRAK scores, same features, solves on {device} vs cpu (max ‖Δτ‖/‖τ‖)",
            relative_row_error(scores_dev, scores_cpu), 1e-8, "<=", f"fp64 solves only; {lam}"),
        row("twins", f"TRAK scores, each device's own bf16 features, {device} vs cpu (max ‖Δτ‖/‖τ‖)",
            relative_row_error(scores_dev16, scores_cpu16), 5e-2, "<=",
            "feature differences (≤ 1e-2) amplified by K_λ's conditioning; compare the reference row below"),
        row("twins", "(reference) TRAK scores, bf16 vs fp32 features, both cpu (max ‖Δτ‖/‖τ‖)",
            relative_row_error(scores_cpu16, scores_cpu), 5e-2, "<=", f"the bf16 feature error through the same kernel; {lam}"),
    ]
    return rows


# ---------------------------------------------------------------- throughput


def synchronize(device: str) -> None:
    """Wait for queued CUDA work (a no-op on the CPU), so wall-clock timers measure the work."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def prepared_model(name: str, device: str) -> Any:
    """benchmarks/featurize.py's model ``name``, seeded, eval mode, plain attention (as its runners build it)."""
    import torch

    from diffattr.featurize import prepare_for_vmap
    from diffattr.models.ddpm import build_unet
    from featurize import unet_config

    torch.manual_seed(0)
    return prepare_for_vmap(build_unet(unet_config(name)).to(device))


def forward_backward_seconds(name: str, n: int, timesteps: int, batch_size: int, device: str) -> float:
    """The roofline: a plain forward + backward of the mean L_Simple over the same B·K noisy images per
    batch (one gradient per batch, no per-sample gradients, no projection), one warm-up batch first."""
    from diffattr.models.ddpm import build_scheduler, noisy_draws
    from featurize import batch, unet_config

    model = prepared_model(name, device)
    abar = build_scheduler({"num_train_timesteps": 1000, "beta_schedule": "linear"}).alphas_cumprod.float().to(device)
    x0, ts, eps = (t.to(device) for t in batch(unet_config(name), n, timesteps))

    def step(a: int) -> None:
        x_t, tt, ee = noisy_draws(x0[a : a + batch_size], ts[a : a + batch_size], eps[a : a + batch_size], abar)
        ((model(x_t, tt).sample - ee) ** 2).mean().backward()

    step(0)
    synchronize(device)
    start = time.perf_counter()
    for a in range(0, n, batch_size):
        step(a)
    synchronize(device)
    return time.perf_counter() - start


def projection_seconds(n_params: int, n: int, k: int, batch_size: int, dtype: str, device: str) -> float:
    """Projection alone (diffattr's Projector, as featurize builds it) of n gradients in batches, timed
    with a device sync around it; one warm-up batch first."""
    import torch

    from diffattr.projection import ProjectionConfig, Projector

    projector = Projector(ProjectionConfig(type="gaussian", dim=k, seed=0, dtype=dtype), n_params, device)
    g = torch.randn(batch_size, n_params, device=device, generator=torch.Generator(device).manual_seed(0))
    projector(g)
    synchronize(device)
    start = time.perf_counter()
    for a in range(0, n, batch_size):
        projector(g[: min(batch_size, n - a)])
    synchronize(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float]]:
    """Peak memory of the block in MB: torch.cuda.max_memory_allocated on CUDA, the process's peak RSS on the CPU."""
    import resource

    import torch

    out: dict[str, float] = {}
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        yield out
    finally:
        synchronize(device)
        out["mb"] = (torch.cuda.max_memory_allocated() if device == "cuda"
                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20


def traker_result(model: str, sizes: Sizes, device: str) -> tuple[dict[str, Any] | None, str]:
    """benchmarks/featurize.py's traker runner on the same model and batch, or (None, why not)."""
    if importlib.util.find_spec("trak") is None:
        return None, "traker not installed"
    from featurize import run_traker

    try:
        if device == "cuda":  # the same warm-up diffattr's run gets
            run_traker(model, sizes.bench_batch, sizes.bench_dim, sizes.bench_timesteps, sizes.bench_batch, device,
                       "float32")
        result = run_traker(model, sizes.bench_samples, sizes.bench_dim, sizes.bench_timesteps, sizes.bench_batch,
                            device, "float32")
    except Exception as error:  # a peer library's failure is a row, never the check's failure
        return None, f"traker failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return result, f"traker 0.3.x, {result.get('projector', 'traker projector')} fp32 (benchmarks/featurize.py's runner)"


def cuda_projector_note(device: str) -> str:
    """Whether traker's CudaProjector (its fast_jl extension) imports here."""
    if device != "cuda":
        return "CudaProjector not tried on the CPU"
    if importlib.util.find_spec("fast_jl") is None:
        return "CudaProjector unavailable (fast_jl not installed), so BasicProjector on CUDA"
    return "fast_jl imports: benchmarks/featurize.py's traker runner uses CudaProjector when it runs"


def throughput(device: str, sizes: Sizes) -> list[dict[str, Any]]:
    """Featurization samples/s (diffattr bf16 and traker), peak memory, projection share and roofline ratio."""
    from featurize import run_diffattr

    n, k, K, B, name = sizes.bench_samples, sizes.bench_dim, sizes.bench_timesteps, sizes.bench_batch, sizes.bench_model
    if device == "cuda":  # cuDNN autotuning, lazy CUDA init and allocator growth: not part of the rate
        run_diffattr(name, B, k, K, B, device, "bfloat16")
    with peak_memory(device) as mem:
        ours = run_diffattr(name, n, k, K, B, device, "bfloat16")
    total = ours["grad_s"] + ours["project_s"]
    proj = projection_seconds(ours["params"], n, k, B, "bfloat16", device)
    roofline = forward_backward_seconds(name, n, K, B, device)
    what = f"{name} UNet, {ours['params']:,} parameters, {n} samples, batch {B}, K = {K}, k = {k}"
    share_target = 0.20 if device == "cuda" else 0.30
    rows = [
        row("throughput", "diffattr featurize, bf16 projection", n / total, unit="samples/s",
            why=f"{what}; projection setup {ours['setup_s']:.1f} s not counted"),
        row("throughput", "peak " + ("GPU memory (max_memory_allocated)" if device == "cuda" else "RSS"), mem["mb"],
            unit="MB", why="diffattr featurize run above"),
        row("throughput", "projection share of featurization time", proj / total, share_target, "<=",
            "projection alone (synchronised) / featurize; target from issue 17 (CPU: < 0.30)"),
        row("throughput", "plain forward+backward / featurize time (roofline ratio)", roofline / total, 0.5, ">=",
            f"same prepared model and B·K images, one gradient per batch ({roofline:.2f} s vs {total:.2f} s)"),
    ]
    theirs, why = traker_result(name, sizes, device)
    if theirs is None:
        rows.append(row("throughput", "traker featurize", None, why=why))
        return rows
    traker_total = theirs["grad_s"] + theirs["project_s"]
    rows += [
        row("throughput", "traker featurize", n / traker_total, unit="samples/s", why=f"{why}; {cuda_projector_note(device)}"),
        row("throughput", "diffattr / traker featurize throughput", traker_total / total, 2.0, ">=",
            "same model, batch and (t, ε) draws; target from issue 17"),
    ]
    return rows


# ---------------------------------------------------------------- end to end


def write_random_images(root: Path, per_class: int, side: int = 32, seed: int = 0) -> Path:
    """Random RGB PNGs in image_folder's layout: two class subfolders (a CIFAR-2 stand-in)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in ("class_a", "class_b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / name / f"{i:04d}.png")
    return root


def e2e_overlay(data: Path, out: Path, sizes: Sizes) -> dict[str, Any]:
    """A config overlay for a CIFAR-shaped run: image_folder data, a few subset models, tiny steps,
    TRAK + the pixel baseline, no counterfactual, ``resources.gpus: 1``."""
    cifar = {}
    if sizes.e2e_unet == "cifar":
        from diffattr.config import read_config_file

        cifar = read_config_file(REPO / "config/cifar2.yaml")["model"]["unet"]
    unet = {"sample_size": 32, "in_channels": 3, "out_channels": 3, **(cifar or SMALL_UNET)}
    spec = {"output": "loss", "timestep_strategy": "uniform", "timesteps": 2, "noise_seeds": [0], "checkpoint": 1.0,
            "projection": {"type": "gaussian", "dim": 64, "seed": 42, "dtype": "bfloat16"},
            "shard_size": 2 * sizes.e2e_per_class, "batch_size": 16}
    pool = {"seeds": [0]}
    return {
        "output_dir": str(out),
        "data": {"source": "image_folder", "path": str(data), "resolution": 32, "color": "rgb",
                 "n_train": None, "n_attributed": 10},
        "model": {"unet": unet},
        "train": {"steps": 8, "batch_size": 16, "checkpoint_fractions": [1.0], "resume_every": 8, "log_every": 8},
        "full_model": {"seeds": [0]},
        "subsets": {"pools": {"lds": {"count": 3, **pool}, "select": {"count": 2, **pool},
                              "retrain": {"count": 0, **pool}, "encoded": {"count": 0, **pool}}},
        "generate": {"count": 4, "steps": 2},
        "ground_truth": {"timesteps": 2, "noise_seeds": [0]},
        "features": {"loss": spec},
        "methods": {"trak": {"kind": "trak", "features": "loss", "models": {"pool": "full", "count": 1},
                             "lambdas": [1.0e-2, 1.0]}},
        "sweeps": None,
        "counterfactual": {"methods": [], "count": 1, "ks": [1]},
        "report": {"set": "val", "samples": [0], "methods": ["trak"], "top": 2},
        "evaluation": {"sets": ["val"], "methods": ["pixel_l2", "trak"], "lds": {"bootstrap_resamples": 8}},
        "resources": {"gpus": 1},
    }


def read_lds_rows(path: Path) -> list[dict[str, Any]]:
    """The LDS table's rows (lds.csv) as dicts, an empty cell (NaN) as None (JSON has no NaN)."""
    import pandas as pd

    table = pd.read_csv(path)
    return table.astype(object).where(table.notna(), None).to_dict("records")


def end_to_end(device: str, sizes: Sizes, tmp: Path, cores: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the workflow on random CIFAR-shaped data up to its LDS table; (table rows, LDS rows)."""
    import yaml

    data = write_random_images(tmp / "images", sizes.e2e_per_class)
    out = tmp / "results"
    overlay = tmp / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(e2e_overlay(data, out, sizes)))
    target = out / "lds.csv"
    cmd = [sys.executable, "-m", "snakemake", str(target), "--cores", str(cores), "--configfile", str(overlay)]
    env = {**os.environ, "DIFFATTR_DEVICE": device}
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=sizes.e2e_timeout)
        failure = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        failure = f"did not finish within {sizes.e2e_timeout} s"
    seconds = time.perf_counter() - start
    what = (f"{2 * sizes.e2e_per_class} random 32×32 RGB images (image_folder), {sizes.e2e_unet} UNet, 5 subset "
            f"models, 8 steps, --cores {cores}, DIFFATTR_DEVICE={device}, resources.gpus: 1")
    if failure is not None:
        return [row("end to end", "workflow to the LDS table", None, why=f"FAILED after {seconds:.0f} s: {failure}")], []
    lds = read_lds_rows(target)
    rows = [row("end to end", "workflow wall time, up to lds.csv", seconds, unit="s", why=what)]
    for r in lds:
        label = ", ".join(f"{key} {r[key]}" for key in ("method", "set") if key in r)
        value = next((r[key] for key in ("lds", "mean") if key in r), None)
        rows.append(row("end to end", f"LDS row: {label}", None if value is None else float(value),
                        why="random data and 8 training steps: a plumbing check, not a quality figure"))
    return rows, lds


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CI); the end-to-end run is skipped unless --e2e")
    ap.add_argument("--e2e", action="store_true", help="run the end-to-end workflow part under --tiny too")
    ap.add_argument("--skip", nargs="*", default=[], help="parts to leave out: twins throughput e2e")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "gpu_check"), help="folder for gpu_check.md and .json")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores; --tiny: 1)")
    ap.add_argument("--cores", type=int, default=None, help="snakemake --cores of the end-to-end run (default: up to 8)")
    return ap.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad input in one sentence before any compute (CheckError)."""
    if args.device not in ("cpu", "cuda"):
        raise CheckError(f"--device must be cpu or cuda, not {args.device!r}.")
    unknown = sorted(set(args.skip) - {"twins", "throughput", "e2e"})
    if unknown:
        raise CheckError(f"--skip takes twins, throughput or e2e, not {', '.join(unknown)}.")
    for name in ("threads", "cores"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CheckError(f"--{name} must be at least 1, not {value}.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CheckError(f"--out {out} is a file, not a folder.")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CheckError("--device cuda was asked for but torch sees no CUDA GPU here "
                             f"(torch {torch.__version__}); run on a GPU machine, or pass --device cpu.")


def environment(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    env = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads(), "host": platform.node(),
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device == "cuda":
        env.update({"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda})
    return env


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Every part the arguments select; returns the JSON document (rows, LDS rows, environment)."""
    import torch

    from diffattr.models.ddpm import build_unet, count_parameters

    sizes = TINY if args.tiny else FULL
    torch.set_num_threads(args.threads or (1 if args.tiny else len(os.sched_getaffinity(0))))
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    lds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        if "twins" not in args.skip:
            n_params = count_parameters(build_unet(smoke_config()["model"]["unet"]))
            rows += projection_twins(args.device, n_params, sizes.twin_dim, sizes.twin_rows, (42, 2**32 - 1))
            rows += feature_twins(args.device, sizes, Path(tmp) / "twins")
        if "throughput" not in args.skip:
            rows += throughput(args.device, sizes)
        if "e2e" not in args.skip:
            if args.tiny and not args.e2e:
                rows.append(row("end to end", "workflow to the LDS table", None,
                                why="skipped under --tiny: its 29 jobs took 181 s on 2 busy cores (mostly each "
                                    "job's torch + diffusers start-up), over the 60–90 s budget; add --e2e to run it"))
            else:
                cores = args.cores or min(8, len(os.sched_getaffinity(0)))
                e2e_rows, lds = end_to_end(args.device, sizes, Path(tmp) / "e2e", cores)
                rows += e2e_rows
    return {"environment": environment(args.device), "sizes": asdict(sizes), "tiny": args.tiny,
            "seconds": time.perf_counter() - started, "rows": rows, "lds": lds}


def main(argv: list[str] | None = None) -> int:
    """Parse, check, run, write ``gpu_check.md`` and ``gpu_check.json`` under --out; the exit status."""
    args = parse_args(argv)
    os.chdir(REPO)  # benchmarks/featurize.py reads its configs relative to the repository root
    os.environ.setdefault("TQDM_DISABLE", "1")  # featurize's progress bars: noise around the table
    try:
        check_args(args)
    except CheckError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    result = run_check(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = result["environment"]
    header = (f"GPU check on {env.get('gpu', 'cpu')} ({'tiny' if args.tiny else 'full'} sizes, torch {env['torch']}, "
              f"{result['seconds']:.0f} s)")
    (out / "gpu_check.md").write_text(markdown(result["rows"], header))
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    print(markdown(result["rows"], header))
    print(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return 0 if twins_ok(result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
