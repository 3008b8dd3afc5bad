"""Influence functions (docs/methods.md §2.8): wall time and peak memory of the CG and LiSSA solvers on the
default digits UNet (config.yaml ``model.unet``, 164 k parameters), each solver in its own subprocess
(clean peak RSS).

    python benchmarks/influence.py                                  # 200 train × 20 queries, K = 1
    python benchmarks/influence.py --n-train 500 --timesteps 10 --cg-iterations 30 --solvers cg
    python benchmarks/influence.py --images results/data/dataset.zarr \
        --weights results/models/full/0/seed0/step500.safetensors

Random weights and uniform random images by default (timing does not depend on them); ``--weights``
and ``--images`` (an image store: train split for the training set, val for the queries) use real
ones. Prints one row per solver: HVPs (one per vector), images per HVP, the s_test time, the total
(query gradients + s_test + streamed train gradients), s_test milliseconds per (vector · image ·
draw), peak RSS (and peak CUDA memory on GPU), then the method's log lines. A CG iteration costs one
HVP per still-running query over all N·K (image, draw) pairs; a LiSSA step one HVP per query over a
minibatch of ``--lissa-batch`` images (plus, for the automatic scale, power iterations on all N).
Random-init Hessians are indefinite, and a few iterations do not converge: the numbers are costs, not
converged solutions.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> None:
    import logging

    import numpy as np
    import torch
    import yaml

    from diffattr.methods.influence import InfluenceConfig, influence_scores
    from diffattr.models.ddpm import build_scheduler, build_unet, load_unet

    logging.basicConfig(level=logging.INFO, format="  [%(name)s] %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with open(args.config) as f:
        model_cfg = yaml.safe_load(f)["model"]
    torch.manual_seed(0)
    model = load_unet(args.weights, model_cfg["unet"], device) if args.weights else build_unet(model_cfg["unet"])
    sched = build_scheduler(model_cfg["scheduler"])
    if args.images:
        from diffattr.data.store import read_images, to_model_range

        train = to_model_range(read_images(args.images, "train")[: args.n_train])
        queries = to_model_range(read_images(args.images, "val")[: args.n_queries])
    else:
        u = model_cfg["unet"]
        shape = (u["in_channels"], u["sample_size"], u["sample_size"])
        rng = np.random.default_rng(0)
        train = rng.uniform(-1, 1, (args.n_train, *shape)).astype(np.float32)
        queries = rng.uniform(-1, 1, (args.n_queries, *shape)).astype(np.float32)
    cfg = InfluenceConfig(solver=args.solver, damping=args.damping, timesteps=args.timesteps,
                          cg_iterations=args.cg_iterations, cg_tolerance=args.cg_tolerance,
                          lissa_depth=args.lissa_depth, lissa_repeats=args.lissa_repeats,
                          lissa_batch_size=args.lissa_batch, lissa_scale=args.lissa_scale,
                          power_iterations=args.power_iterations, hessian_batch_size=args.hessian_batch,
                          hvp_vectors=args.hvp_vectors, batch_size=args.batch_size)
    start = time.perf_counter()
    scores = influence_scores(model, sched, train, {"val": queries}, cfg, device)["val"]
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "params": sum(p.numel() for p in model.parameters()), "device": device,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "finite": bool(np.isfinite(scores).all()), "score_abs_mean": float(np.abs(scores).mean())}
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def child_options(args: argparse.Namespace) -> list[str]:
    """The parsed options, as command-line arguments for a child process."""
    out = []
    for name, value in vars(args).items():
        if name in ("solvers", "child", "solver") or value is None:
            continue
        out += [f"--{name.replace('_', '-')}", str(value)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml", help="YAML whose model.unet / model.scheduler are used")
    ap.add_argument("--weights", default=None, help="safetensors checkpoint (default: random init)")
    ap.add_argument("--images", default=None, help="image store (default: uniform random images)")
    ap.add_argument("--solvers", nargs="+", default=["cg", "lissa"], choices=["cg", "lissa", "exact"])
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-queries", type=int, default=20)
    ap.add_argument("--timesteps", type=int, default=1, help="(t, ε) draws per image (K)")
    ap.add_argument("--damping", type=float, default=1.0)
    ap.add_argument("--cg-iterations", type=int, default=6)
    ap.add_argument("--cg-tolerance", type=float, default=1e-5)
    ap.add_argument("--lissa-depth", type=int, default=60)
    ap.add_argument("--lissa-repeats", type=int, default=1)
    ap.add_argument("--lissa-batch", type=int, default=8, help="images per LiSSA minibatch")
    ap.add_argument("--lissa-scale", type=float, default=None, help="default: 2·(ρ(H) + λ) by power iteration")
    ap.add_argument("--power-iterations", type=int, default=10)
    ap.add_argument("--hessian-batch", type=int, default=25, help="images per HVP chunk")
    ap.add_argument("--hvp-vectors", type=int, default=20, help="vectors per vmapped HVP")
    ap.add_argument("--batch-size", type=int, default=50, help="images per per-sample-gradient batch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--solver", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(f"digits UNet ({args.config}), N = {args.n_train} train × Q = {args.n_queries} queries, "
          f"K = {args.timesteps} (t, ε) draws, λ = {args.damping:g}, torch threads {args.threads}")
    print(f"{'solver':7} {'settings':40} {'HVPs':>6} {'img/HVP':>7} {'s_test s':>8} {'total s':>8} "
          f"{'ms/(vec·img)':>12} {'peak RSS MB':>11} {'peak CUDA MB':>12}")
    for solver in args.solvers:
        out = subprocess.run([sys.executable, __file__, "--child", "--solver", solver, *child_options(args)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{solver:7} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        logs = [line for line in out.stderr.splitlines() if "[diffattr.methods.influence]" in line]
        solve_s = next((float(line.split(" in ")[1].split()[0]) for line in logs if "s_test for" in line), float("nan"))
        if solver == "cg":
            settings = f"≤{args.cg_iterations} iterations, tol {args.cg_tolerance:g}"
            hvps = next((int(line.split("(")[1].split()[0]) for line in logs if "iterations (" in line), 0)
            work, per = hvps * args.n_train, f"{args.n_train}"
        elif solver == "lissa":
            power = args.power_iterations if args.lissa_scale is None else 0
            settings = f"depth {args.lissa_depth} × {args.lissa_repeats}, +{power} power its"
            hvps = args.lissa_depth * args.lissa_repeats * args.n_queries
            work, per = hvps * args.lissa_batch + power * args.n_train, f"{args.lissa_batch}"
        else:
            settings, hvps = "materialised H", r["params"]
            work, per = hvps * args.n_train, f"{args.n_train}"
        cuda = f"{r['peak_cuda_mb']:>12.0f}" if "peak_cuda_mb" in r else f"{'-':>12}"
        print(f"{solver:7} {settings:40} {hvps:>6} {per:>7} {solve_s:>8.1f} {r['seconds']:>8.1f} "
              f"{1000 * solve_s / (work * args.timesteps):>12.2f} {r['peak_rss_mb']:>11.0f} {cuda}")
        for line in logs:
            print(line)


if __name__ == "__main__":
    main()
