"""Featurization throughput and peak memory: diffattr vs traker (TRAKer + BasicProjector), same model,
same batch, same (t, ε) draws, each measured in its own subprocess (clean peak RSS).

    python benchmarks/featurize.py                       # digits model, then the CIFAR-sized UNet
    python benchmarks/featurize.py --models digits --samples 256 --k 2048

Prints one row per (model, library, stage): samples/s and peak RSS, and the diffattr/traker ratio.
Stages: ``grad`` (per-sample gradients only, K timesteps averaged), ``project`` (projection only, on
precomputed gradients), ``featurize`` (both, end to end). Random weights: timing does not depend on
them. On CUDA (when visible) the same runs use the GPU; traker then uses its CudaProjector if its
``fast_jl`` extension is installed, else BasicProjector.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import yaml

MODELS = {
    "digits": "config.yaml",  # 164 k parameters, 8×8×1
    "cifar": "config/cifar2.yaml",  # DDPM-CIFAR, ≈36 M parameters, 32×32×3
}


def unet_config(name: str) -> dict:
    with open(MODELS[name]) as f:
        return yaml.safe_load(f)["model"]["unet"]


def batch(unet: dict, n: int, timesteps: int, seed: int = 0):
    import numpy as np
    import torch

    from diffattr.noise import gaussian_noise, timestep_set

    shape = (unet["in_channels"], unet["sample_size"], unet["sample_size"])
    x0 = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32))
    ts = np.tile(timestep_set("uniform", timesteps, 1000), (n, 1))
    eps = torch.from_numpy(gaussian_noise(0, "train", np.arange(n), ts, shape))
    return x0, torch.from_numpy(ts), eps


def run_diffattr(name: str, n: int, k: int, timesteps: int, batch_size: int, device: str, dtype: str) -> dict:
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
    t0 = time.perf_counter()
    projector = Projector(ProjectionConfig(type="gaussian", dim=k, seed=0, dtype=dtype), p, device)
    setup = time.perf_counter() - t0
    grad_s = proj_s = 0.0
    for a in range(0, n, batch_size):
        t0 = time.perf_counter()
        g = per_sample_gradients(model, x0[a : a + batch_size], ts[a : a + batch_size], eps[a : a + batch_size], "loss", abar, betas)
        t1 = time.perf_counter()
        projector(g)
        if device == "cuda":
            torch.cuda.synchronize()
        grad_s += t1 - t0
        proj_s += time.perf_counter() - t1
    return {"params": p, "grad_s": grad_s, "project_s": proj_s, "setup_s": setup}


def run_traker(name: str, n: int, k: int, timesteps: int, batch_size: int, device: str, dtype: str) -> dict:
    import torch
    from trak import TRAKer
    from trak.modelout_functions import AbstractModelOutput
    from trak.projectors import BasicProjector, ProjectionType

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
    t0 = time.perf_counter()
    projector = BasicProjector(grad_dim=p, proj_dim=k, seed=0, proj_type=ProjectionType.normal, device=device,
                               dtype=torch.float32, block_size=100)
    with tempfile.TemporaryDirectory() as tmp:
        traker = TRAKer(model=model, task=DiffusionLoss(), train_set_size=n, save_dir=tmp, device=device,
                        projector=projector, proj_dim=k, use_half_precision=False, load_from_save_dir=False)
        traker.load_checkpoint(model.state_dict(), model_id=0)
        setup = time.perf_counter() - t0
        grad_s = proj_s = 0.0
        gc = traker.gradient_computer
        for a in range(0, n, batch_size):
            b = (x0[a : a + batch_size], ts[a : a + batch_size], eps[a : a + batch_size])
            t0 = time.perf_counter()
            g = gc.compute_per_sample_grad(batch=b)
            t1 = time.perf_counter()
            projector.project(g, model_id=0)
            if device == "cuda":
                torch.cuda.synchronize()
            grad_s += t1 - t0
            proj_s += time.perf_counter() - t1
    return {"params": p, "grad_s": grad_s, "project_s": proj_s, "setup_s": setup}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = run_diffattr if args.library == "diffattr" else run_traker
    result = run(args.model, args.samples, args.k, args.timesteps, args.batch_size, device, args.dtype)
    result.update({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "device": device})
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits", "cifar"], choices=list(MODELS))
    ap.add_argument("--samples", type=int, default=None, help="samples per run (default: 256 digits, 8 cifar)")
    ap.add_argument("--k", type=int, default=None, help="projection dim (default: 2048 digits, 64 cifar on CPU)")
    ap.add_argument("--timesteps", type=int, default=None, help="K (default: 10 digits, 1 cifar on CPU)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                    help="diffattr's projection compute dtype (traker: float32 on CPU, where its fp16 path is not used)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--library", choices=["diffattr", "traker"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import torch

    gpu = torch.cuda.is_available()
    print(f"device: {'cuda' if gpu else 'cpu'}, torch threads per run: {args.threads}, diffattr projection dtype: {args.dtype}")
    header = f"{'model':8} {'params':>10} {'library':9} {'K':>3} {'k':>5} {'grad/s':>9} {'proj/s':>9} {'featurize/s':>11} {'setup s':>8} {'peak MB':>8}"
    print(header)
    for name in args.models:
        big = name == "cifar"
        n = args.samples or (8 if big and not gpu else 256)
        k = args.k or (64 if big and not gpu else 2048)
        timesteps = args.timesteps or (1 if big and not gpu else 10)
        bs = args.batch_size or (4 if big else 64)
        rows = {}
        for library in ("diffattr", "traker"):
            cmd = [sys.executable, __file__, "--child", "--library", library, "--model", name, "--samples", str(n),
                   "--k", str(k), "--timesteps", str(timesteps), "--batch-size", str(bs), "--threads", str(args.threads),
                   "--dtype", args.dtype]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name:8} {library}: failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows[library] = r
            print(f"{name:8} {r['params']:>10} {library:9} {timesteps:>3} {k:>5} {n / r['grad_s']:>9.1f} "
                  f"{n / r['project_s']:>9.1f} {n / (r['grad_s'] + r['project_s']):>11.1f} {r['setup_s']:>8.1f} {r['peak_rss_mb']:>8.0f}")
        if len(rows) == 2:
            ours, theirs = rows["diffattr"], rows["traker"]
            ratio = (theirs["grad_s"] + theirs["project_s"]) / (ours["grad_s"] + ours["project_s"])
            with_setup = (theirs["grad_s"] + theirs["project_s"] + theirs["setup_s"]) / (
                ours["grad_s"] + ours["project_s"] + ours["setup_s"])
            print(f"{name:8} diffattr/traker featurization throughput: {ratio:.2f}× ({with_setup:.2f}× including setup); "
                  f"projection share of diffattr time: {ours['project_s'] / (ours['grad_s'] + ours['project_s']):.0%}")


if __name__ == "__main__":
    main()
