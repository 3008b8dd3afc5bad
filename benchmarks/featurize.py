"""Featurization throughput and peak memory: diffattr vs traker (TRAKer + BasicProjector), same model,
same batch, same (t, ε) draws, each measured in its own subprocess (clean peak RSS).

    python benchmarks/featurize.py                       # digits model, then the CIFAR-sized UNet
    python benchmarks/featurize.py --models digits --samples 256 --k 2048
    python benchmarks/featurize.py --models cifar2m cifar --samples 16 --batch-size 16 --timesteps 1 \
        --k 2048 4096 --proj-params cifar=1000000     # CPU-sized CIFAR rows (benchmarks/README.md)

Prints one row per (model, k, library): samples/s of each stage, peak RSS, the projector used and the
projection's share of featurization time, then the diffattr/traker ratio.
Stages: ``grad`` (per-sample gradients only, K timesteps averaged), ``project`` (projection only, on
precomputed gradients), ``featurize`` (both, end to end). Random weights: timing does not depend on
them. On CUDA (when visible) the same runs use the GPU; traker then uses its CudaProjector if its
``fast_jl`` extension is installed, else BasicProjector (the row's ``projector`` says which).

``--proj-params MODEL=R`` projects only the first R gradient entries of MODEL (both libraries) and
scales the measured projection time — and the projector's construction time — by p/R: on CPU both
libraries regenerate the random matrix on every batch once it does not fit in memory, a cost linear
in p. Use it where a full projection of a 36 M-parameter model does not finish; diffattr still
chooses cached-vs-regenerated as it would for the full p. Peak RSS is then the slice's (traker's
BasicProjector would hold p × 100 float32 more at full p).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import yaml

MODELS = {
    "digits": "config.yaml",  # 164 k parameters, 8×8×1
    # config.yaml's digits UNet widened 3.5× at 32×32×3: 1 989 403 parameters (the p-growth row)
    "cifar2m": ("config.yaml", {"sample_size": 32, "in_channels": 3, "out_channels": 3,
                                "block_out_channels": [56, 112]}),
    "cifar": "config/cifar2.yaml",  # DDPM-CIFAR, ≈36 M parameters, 32×32×3
}
CPU_SMALL = ("digits",)  # models whose CPU defaults are the full-size ones
DIFFATTR_MAX_CACHED_BYTES = 4 << 30  # diffattr.projection.Projector's default


def unet_config(name: str) -> dict:
    path, overlay = MODELS[name] if isinstance(MODELS[name], tuple) else (MODELS[name], {})
    with open(path) as f:
        return {**yaml.safe_load(f)["model"]["unet"], **overlay}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def batch(unet: dict, n: int, timesteps: int, seed: int = 0):
    import numpy as np
    import torch

    from diffattr.noise import gaussian_noise, timestep_set

    shape = (unet["in_channels"], unet["sample_size"], unet["sample_size"])
    x0 = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32))
    ts = np.tile(timestep_set("uniform", timesteps, 1000), (n, 1))
    eps = torch.from_numpy(gaussian_noise(0, "train", np.arange(n), ts, shape))
    return x0, torch.from_numpy(ts), eps


def run_diffattr(name: str, n: int, k: int, timesteps: int, batch_size: int, device: str, dtype: str,
                 proj_params: int | None = None, projection: str = "gaussian") -> dict:
    import torch

    from diffattr.featurize import per_sample_gradients, prepare_for_vmap
    from diffattr.models.ddpm import build_scheduler, build_unet
    from diffattr.projection import ProjectionConfig, Projector

    torch.manual_seed(0)
    unet = unet_config(name)
    model = prepare_for_vmap(build_unet(unet).to(device))
    sched = build_scheduler({"num_train_timesteps": 1000, "beta_schedule": "linear"})
    abar, betas = sched.alphas_cumprod.float().to(device), sched.betas.float().to(device)
    x0, ts, eps = (t.to(device) for t in batch(unet, n, timesteps))
    p = sum(q.numel() for q in model.parameters())
    # the sketch is O(p) per sample: it always runs on the full gradient, never on a slice
    r = p if projection == "sketch" else min(proj_params or p, p)
    # cache the matrix exactly when diffattr would for the full p (a slice must not change the path)
    cfg = ProjectionConfig(type=projection, dim=k, seed=0, dtype=dtype)
    fits = (cfg.sketch_dim if projection == "sketch" else p) * k * getattr(torch, dtype).itemsize <= DIFFATTR_MAX_CACHED_BYTES
    _sync(device)
    t0 = time.perf_counter()
    projector = Projector(cfg, r, device, max_cached_bytes=DIFFATTR_MAX_CACHED_BYTES if fits else 0)
    _sync(device)
    setup = (time.perf_counter() - t0) * p / r
    grad_s = proj_s = 0.0
    for a in range(0, n, batch_size):
        t0 = time.perf_counter()
        g = per_sample_gradients(model, x0[a : a + batch_size], ts[a : a + batch_size], eps[a : a + batch_size], "loss", abar, betas)
        _sync(device)
        t1 = time.perf_counter()
        projector(g[:, :r] if r < p else g)
        _sync(device)
        grad_s += t1 - t0
        proj_s += (time.perf_counter() - t1) * p / r
    return {"params": p, "grad_s": grad_s, "project_s": proj_s, "setup_s": setup, "proj_params": r,
            "projector": f"diffattr {projection}{f' m={cfg.sketch_dim}' if projection == 'sketch' else ''} "
                         f"{'cached' if fits else 'regenerated'} {dtype}"}


def traker_projector(p: int, k: int, device: str):
    """CudaProjector on CUDA when traker's ``fast_jl`` extension imports (and its test kernel runs),
    with TRAKer's default ``proj_max_batch_size`` of 32; else BasicProjector (float32, blocks of 100
    columns regenerated on every call). Gaussian in both, as diffattr's. Returns (projector, name)."""
    import torch
    from trak.projectors import BasicProjector, CudaProjector, ProjectionType

    if device == "cuda":
        try:
            import fast_jl  # noqa: F401

            return CudaProjector(grad_dim=p, proj_dim=k, seed=0, proj_type=ProjectionType.normal, device=device,
                                 max_batch_size=32), "CudaProjector"
        except (ImportError, ModuleNotFoundError, RuntimeError):
            pass
    return BasicProjector(grad_dim=p, proj_dim=k, seed=0, proj_type=ProjectionType.normal, device=device,
                          dtype=torch.float32, block_size=100), "BasicProjector fp32"


def run_traker(name: str, n: int, k: int, timesteps: int, batch_size: int, device: str, dtype: str,
               proj_params: int | None = None, projection: str = "gaussian") -> dict:
    """traker's TRAKer gradient computer and its projector (CudaProjector on CUDA when ``fast_jl``
    imports, else BasicProjector); ``dtype`` and ``projection`` are diffattr's and unused here."""
    import torch
    from trak import TRAKer
    from trak.modelout_functions import AbstractModelOutput
    from trak.utils import vectorize

    from diffattr.featurize import prepare_for_vmap
    from diffattr.models.ddpm import build_scheduler, build_unet

    torch.manual_seed(0)
    unet = unet_config(name)
    model = prepare_for_vmap(build_unet(unet).to(device))
    abar = build_scheduler({"num_train_timesteps": 1000, "beta_schedule": "linear"}).alphas_cumprod.float().to(device)

    class DiffusionLoss(AbstractModelOutput):
        """Per-sample L_Simple averaged over the sample's K (t, ε) draws, passed in as data."""

        def __init__(self) -> None:
            super().__init__()

        def get_output(self, model, weights, buffers, x0, t, eps):
            a = abar[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0.unsqueeze(0) + (1 - a).sqrt() * eps
            pred = torch.func.functional_call(model, (weights, buffers), (xt, t)).sample
            return ((pred - eps) ** 2).mean()

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            return torch.ones(batch[0].shape[0], 1, device=batch[0].device)

    x0, ts, eps = (t.to(device) for t in batch(unet, n, timesteps))
    p = sum(q.numel() for q in model.parameters())
    r = min(proj_params or p, p)
    _sync(device)
    t0 = time.perf_counter()
    projector, kind = traker_projector(r, k, device)
    _sync(device)
    setup = (time.perf_counter() - t0) * p / r
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        traker = TRAKer(model=model, task=DiffusionLoss(), train_set_size=n, save_dir=tmp, device=device,
                        projector=projector, proj_dim=k, use_half_precision=False, load_from_save_dir=False)
        traker.load_checkpoint(model.state_dict(), model_id=0)
        setup += time.perf_counter() - t0
        grad_s = proj_s = 0.0
        gc = traker.gradient_computer
        for a in range(0, n, batch_size):
            b = (x0[a : a + batch_size], ts[a : a + batch_size], eps[a : a + batch_size])
            t0 = time.perf_counter()
            g = gc.compute_per_sample_grad(batch=b)
            _sync(device)
            t1 = time.perf_counter()
            if r < p:  # flatten the whole gradient as project() would, then project the slice (scaled)
                flat = vectorize(g, device=device)
                _sync(device)
                t2 = time.perf_counter()
                projector.project(flat[:, :r], model_id=0)
                _sync(device)
                proj_s += (t2 - t1) + (time.perf_counter() - t2) * p / r
            else:
                projector.project(g, model_id=0)
                _sync(device)
                proj_s += time.perf_counter() - t1
            grad_s += t1 - t0
    return {"params": p, "grad_s": grad_s, "project_s": proj_s, "setup_s": setup, "proj_params": r,
            "projector": f"traker {kind}"}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = run_diffattr if args.library == "diffattr" else run_traker
    result = run(args.model, args.samples, args.k, args.timesteps, args.batch_size, device, args.dtype,
                 args.proj_params_child, args.projection)
    result.update({"peak_rss_mb": _peak_rss_mb(), "device": device})
    print(json.dumps(result))


def _peak_rss_mb() -> float:
    """This process's VmHWM (ru_maxrss would carry the parent's peak across exec on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits", "cifar"], choices=list(MODELS))
    ap.add_argument("--samples", type=int, default=None, help="samples per run (default: 256 digits, 8 larger models on CPU)")
    ap.add_argument("--k", type=int, nargs="+", default=None,
                    help="projection dim(s) (default: 2048 digits, 64 larger models on CPU)")
    ap.add_argument("--timesteps", type=int, default=None, help="K (default: 10 digits, 1 larger models on CPU)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                    help="diffattr's projection compute dtype (traker: float32 on CPU, where its fp16 path is not used)")
    ap.add_argument("--projection", default="gaussian", choices=["gaussian", "rademacher", "sketch"],
                    help="diffattr's projection type (sketch: CountSketch then Gaussian, O(p) per sample; "
                         "traker: normal)")
    ap.add_argument("--proj-params", nargs="*", default=[], metavar="MODEL=R",
                    help="project only the first R gradient entries of MODEL and scale projection time by p/R")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--library", choices=["diffattr", "traker"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--proj-params-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.k = args.k[0]
        child(args)
        return
    slices = {}
    for item in args.proj_params:
        m, _, r = item.partition("=")
        if m not in MODELS or not r.isdigit():
            ap.error(f"--proj-params wants MODEL=R with MODEL in {list(MODELS)}, got {item!r}")
        slices[m] = int(r)
    import torch

    gpu = torch.cuda.is_available()
    print(f"device: {'cuda' if gpu else 'cpu'}, torch threads per run: {args.threads}, "
          f"diffattr projection: {args.projection}, dtype: {args.dtype}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = (f"{'model':8} {'params':>10} {'library':9} {'K':>3} {'k':>5} {'grad/s':>9} {'proj/s':>9} {'featurize/s':>11} "
              f"{'proj %':>6} {'setup s':>8} {'peak MB':>8}  projector")
    print(header, flush=True)
    for name in args.models:
        big = name not in CPU_SMALL
        n = args.samples or (8 if big and not gpu else 256)
        timesteps = args.timesteps or (1 if big and not gpu else 10)
        bs = args.batch_size or (4 if big else 64)
        for k in args.k or [64 if big and not gpu else 2048]:
            rows = {}
            for library in ("diffattr", "traker"):
                cmd = [sys.executable, __file__, "--child", "--library", library, "--model", name, "--samples", str(n),
                       "--k", str(k), "--timesteps", str(timesteps), "--batch-size", str(bs), "--threads", str(args.threads),
                       "--dtype", args.dtype, "--projection", args.projection]
                if name in slices:
                    cmd += ["--proj-params-child", str(slices[name])]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{name:8} {library}: failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows[library] = r
                total = r["grad_s"] + r["project_s"]
                note = f", projection timed on {r['proj_params']} of {r['params']} entries ×p/R" if r["proj_params"] < r["params"] else ""
                print(f"{name:8} {r['params']:>10} {library:9} {timesteps:>3} {k:>5} {n / r['grad_s']:>9.3g} "
                      f"{n / r['project_s']:>9.3g} {n / total:>11.3g} {r['project_s'] / total:>6.1%} "
                      f"{r['setup_s']:>8.1f} {r['peak_rss_mb']:>8.0f}  {r['projector']}{note}", flush=True)
                print(f"  raw: {json.dumps(r)}; load average {os.getloadavg()[0]:.2f}", flush=True)
            if len(rows) == 2:
                ours, theirs = rows["diffattr"], rows["traker"]
                ratio = (theirs["grad_s"] + theirs["project_s"]) / (ours["grad_s"] + ours["project_s"])
                with_setup = (theirs["grad_s"] + theirs["project_s"] + theirs["setup_s"]) / (
                    ours["grad_s"] + ours["project_s"] + ours["setup_s"])
                print(f"{name:8} k={k}: diffattr/traker featurization throughput: {ratio:.2f}× ({with_setup:.2f}× including "
                      f"setup); projection share of diffattr time: {ours['project_s'] / (ours['grad_s'] + ours['project_s']):.1%}; "
                      f"load average now: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
