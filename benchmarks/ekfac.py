"""EK-FAC influence (docs/methods.md §2.9): time and peak memory of fitting the curvature and scoring, for
diffattr's :func:`diffattr.methods.ekfac.ekfac_scores` (kronfluence engine) and for dattri's
``IFAttributorEKFAC``, on config.yaml's digits UNet, each run in its own subprocess (clean peak RSS).

    python benchmarks/ekfac.py                                  # 300 train × 50 queries, 4 draws each
    python benchmarks/ekfac.py --train 1000 --queries 200 --draws 8 --checkpoint results/models/full/0/seed0/step500.safetensors

Rows:
* ``diffattr all``: every nn.Linear / nn.Conv2d of the UNet, Monte-Carlo Fisher, λ = 0.1·mean eigenvalue.
* ``diffattr lin`` and ``dattri lin``: the same EK-FAC restricted to the layers dattri can handle
  (nn.Linear with 2-D inputs: the time-embedding MLP and the ResNet blocks' time projections),
  empirical Fisher (dattri's only kind), the same absolute λ and the same (t, ε) draws, so their
  scores must agree; the agreement is printed.
* ``dattri patched``: dattri again with its two EK-FAC defects fixed in-process (:func:`patch_dattri`);
  only then do its scores agree with diffattr's.
* ``dattri all``: why dattri cannot run EK-FAC on the whole UNet.

``fit`` is the curvature (covariances, eigendecompositions, eigenvalue correction; dattri's ``cache``),
``score`` the gradients and pairwise scores (dattri's ``attribute``). Random weights unless
``--checkpoint`` (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(args: argparse.Namespace):
    import numpy as np
    import torch

    from diffattr.data import load_source
    from diffattr.data.store import to_model_range
    from diffattr.models.ddpm import build_scheduler, build_unet, load_unet

    torch.set_num_threads(args.threads)
    with open(REPO / "config.yaml") as f:
        model_cfg = yaml.safe_load(f)["model"]
    torch.manual_seed(0)
    unet = load_unet(args.checkpoint, model_cfg["unet"]) if args.checkpoint else build_unet(model_cfg["unet"])
    images = to_model_range(load_source("digits", None, None, "gray")["all"].images)
    rows = np.random.default_rng(0).permutation(len(images))
    train = images[rows[: args.train]]
    queries = images[rows[args.train : args.train + args.queries]]
    return unet.eval(), build_scheduler(model_cfg["scheduler"]), train, queries


def linear_2d_modules(unet) -> list[str]:
    """nn.Linear layers fed (batch, features) inputs: the only layers dattri's EK-FAC handles."""
    import torch

    return [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)
            and (n.startswith("time_embedding.") or n.endswith("time_emb_proj"))]


def run_diffattr(args: argparse.Namespace) -> dict:
    from diffattr.methods.ekfac import EkfacConfig, ekfac_scores

    unet, sched, train, queries = setup(args)
    base = rss_mb()
    common = dict(fit_draws=args.draws, train_draws=args.draws, query_draws=args.draws, batch_size=args.batch_size,
                  seed=0, queries_per_pass=args.queries)
    if args.layers == "all":
        cfg = EkfacConfig(strategy="ekfac", **common)
    else:
        cfg = EkfacConfig(strategy="ekfac", fisher="empirical", modules=tuple(linear_2d_modules(unet)), **common)
    info: dict = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        scores = ekfac_scores(unet, sched, train, {"val": queries}, cfg, tmp, info=info)["val"]
    total = time.perf_counter() - t0
    if args.save:
        import numpy as np

        np.save(args.save, scores)
    return {"fit_s": info["fit_seconds"], "score_s": info["score_seconds"], "total_s": total,
            "damping": info["damping"], "params": info["tracked_parameters"], "base_mb": base}


def patch_dattri() -> None:
    """Fix, in this process only, the two defects of dattri 0.3.0's EK-FAC that make it disagree with
    the exact EK-FAC formula (checked against diffattr, which tests/test_ekfac.py checks exactly):

    1. ``torch.linalg.eigh`` returns eigenvectors as *columns*, but dattri rotates into the eigenbasis
       with ``q_s @ g @ q_a.T`` (rows) both for the eigenvalue correction and for the inverse; we hand
       it transposed eigenvector matrices so that its formula becomes Q_Sᵀ g Q_A.
    2. With a bias, the query gradient is rebuilt as ``cat([W.flatten(), b]).reshape(out, in + 1)``,
       which does not put b in the last column (and the result is flattened back the same way, out of
       step with the train gradient's [W, b] layout); we rebuild [W | b] per output row instead.
    """
    import torch
    from dattri.algorithm.influence_function import IFAttributorEKFAC
    from dattri.func import fisher

    original = fisher.estimate_eigenvector

    def eigenvectors_as_rows(covariances):
        return {k: (qa.T.contiguous(), qs.T.contiguous()) for k, (qa, qs) in original(covariances).items()}

    def transform_test_rep(self, ckpt_idx, test_rep):
        parts, start = [], 0
        for name in self.module_name:
            module = self.name_to_module[name]
            g = test_rep[:, start : start + module.weight.numel()].reshape(-1, *module.weight.shape)
            start += module.weight.numel()
            if module.bias is not None:
                g = torch.cat([g, test_rep[:, start : start + module.bias.numel(), None]], dim=-1)
                start += module.bias.numel()
            q_a, q_s = self.cached_q[name]
            g = q_s.T @ ((q_s @ g @ q_a.T) / (self.cached_lambdas[name] + self.damping)) @ q_a
            parts += [g[:, :, :-1].flatten(1), g[:, :, -1]] if module.bias is not None else [g.flatten(1)]
        return torch.cat(parts, dim=1)

    fisher.estimate_eigenvector = eigenvectors_as_rows
    IFAttributorEKFAC.transform_test_rep = transform_test_rep


def run_dattri(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from dattri.algorithm.influence_function import IFAttributorEKFAC
    from dattri.task import AttributionTask

    if args.library == "dattri-patched":
        patch_dattri()

    from diffattr.featurize import prepare_for_vmap
    from diffattr.methods.ekfac import FIT_SPLIT, TRAIN_SPLIT
    from diffattr.models.ddpm import add_noise
    from diffattr.noise import gaussian_noise, sample_timesteps

    unet, sched, train, queries = setup(args)
    model = prepare_for_vmap(unet)  # dattri takes per-sample gradients with torch.func.vmap
    abar = sched.alphas_cumprod.float()
    shape = train.shape[1:]

    def draws(images, split, count):  # exactly diffattr's draws (seed 0, "random" timesteps)
        ids = np.arange(len(images))
        ts = sample_timesteps("random", count, len(abar), 0, split, ids)
        return (torch.from_numpy(images), torch.from_numpy(ts), torch.from_numpy(gaussian_noise(0, split, ids, ts, shape)))

    def loss(params, data):
        """Mean L_Simple over all rows of a batch (B, …) or of one sample's draws (under vmap)."""
        x0, t, eps = data
        if x0.dim() == 3:
            x0, t, eps = x0[None], t[None], eps[None]
        b, d = t.shape
        x = x0[:, None].expand(b, d, *x0.shape[1:]).reshape(b * d, *x0.shape[1:])
        t, eps = t.reshape(-1), eps.reshape(b * d, *x0.shape[1:])
        pred = torch.func.functional_call(model, params, (add_noise(x, eps, t, abar), t)).sample
        return ((pred - eps) ** 2).mean()

    # the curvature rows: one (t, ε) draw per row, as diffattr fits them
    x0, ts, eps = draws(train, FIT_SPLIT, args.draws)
    fit_rows = torch.utils.data.TensorDataset(x0.repeat_interleave(args.draws, 0), ts.reshape(-1, 1),
                                              eps.reshape(-1, 1, *shape))
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False)  # noqa: E731
    train_ds = torch.utils.data.TensorDataset(*draws(train, TRAIN_SPLIT, args.draws))
    query_ds = torch.utils.data.TensorDataset(*draws(queries, "val", args.draws))
    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    attributor = IFAttributorEKFAC(task, module_name=linear_2d_modules(model), device="cpu", damping=args.damping)
    base = rss_mb()
    t0 = time.perf_counter()
    attributor.cache(loader(fit_rows))
    t1 = time.perf_counter()
    scores = attributor.attribute(loader(train_ds), loader(query_ds)).T.detach().numpy()  # (train, test) → (test, train)
    t2 = time.perf_counter()
    if args.save:
        np.save(args.save, scores)
    params = sum(p.numel() for n in linear_2d_modules(model) for p in model.get_submodule(n).parameters())
    return {"fit_s": t1 - t0, "score_s": t2 - t1, "total_s": t2 - t0, "damping": args.damping, "params": params,
            "base_mb": base}


def child(args: argparse.Namespace) -> None:
    result = run_diffattr(args) if args.library == "diffattr" else run_dattri(args)
    result["peak_rss_mb"] = rss_mb()
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--draws", type=int, default=4, help="(t, ε) draws per sample for fit, train and query")
    ap.add_argument("--batch-size", type=int, default=50, help="samples per batch (dattri: rows for the fit)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="safetensors weights of config.yaml's UNet")
    ap.add_argument("--skip-dattri", action="store_true")
    ap.add_argument("--skip-patched", action="store_true", help="do not re-run dattri with its two EK-FAC defects patched")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--library", choices=["diffattr", "dattri", "dattri-patched"], help=argparse.SUPPRESS)
    ap.add_argument("--layers", choices=["all", "lin"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--damping", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    def run(library: str, layers: str, save: str, damping: float = 0.0) -> dict | str:
        cmd = [sys.executable, __file__, "--child", "--library", library, "--layers", layers, "--train", str(args.train),
               "--queries", str(args.queries), "--draws", str(args.draws), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--damping", repr(damping), "--save", save]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            return "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1]
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"EK-FAC on config.yaml's digits UNet ({'checkpoint ' + args.checkpoint if args.checkpoint else 'random init'}), "
          f"{args.train} train × {args.queries} queries, {args.draws} (t, ε) draws per sample and stage, "
          f"batch {args.batch_size}, {args.threads} thread(s), CPU")
    print(f"{'row':14} {'layers':28} {'params':>7} {'fit s':>7} {'score s':>8} {'total s':>8} {'base MB':>8} {'peak MB':>8}  λ")

    def show(name: str, layers: str, r: dict | str) -> None:
        if isinstance(r, str):
            print(f"{name:14} {layers:28} {r}")
        else:
            print(f"{name:14} {layers:28} {r['params']:>7} {r['fit_s']:>7.1f} {r['score_s']:>8.1f} {r['total_s']:>8.1f} "
                  f"{r['base_mb']:>8.0f} {r['peak_rss_mb']:>8.0f}  {r['damping']:.3g}")

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        show("diffattr all", "all Linear+Conv2d, MC Fisher", run("diffattr", "all", f"{tmp}/all.npy"))
        ours = run("diffattr", "lin", f"{tmp}/ours.npy")
        show("diffattr lin", "2-D Linear, empirical", ours)
        if args.skip_dattri:
            return
        if isinstance(ours, str):
            print("dattri lin     skipped: needs diffattr lin's λ")
            return
        theirs = run("dattri", "lin", f"{tmp}/dattri.npy", damping=ours["damping"])
        show("dattri lin", "2-D Linear, empirical", theirs)
        patched = "skipped" if args.skip_patched else run("dattri-patched", "lin", f"{tmp}/patched.npy", damping=ours["damping"])
        show("dattri patched", "2-D Linear, empirical", patched)
        print(f"{'dattri all':14} {'all Linear+Conv2d':28} not run: IFAttributorEKFAC handles nn.Linear with 2-D inputs "
              "only. Conv2d inputs are never unfolded into patches (its hook appends the bias column to the last axis, "
              "the image width), and fisher._update_covariance/_update_lambda set `a_prev` only for 2-D inputs, so "
              "3-D inputs (the attention projections) fail or reuse the previous layer's activations")
        a = np.load(f"{tmp}/ours.npy", allow_pickle=False)
        from scipy.stats import spearmanr

        for label, r, path in (("dattri lin", theirs, "dattri"), ("dattri patched", patched, "patched")):
            if isinstance(r, str):
                continue
            b = np.load(f"{tmp}/{path}.npy", allow_pickle=False)
            rel = np.abs(a - b).max() / np.abs(b).max()
            rho = np.mean([spearmanr(a[i], b[i])[0] for i in range(len(a))])
            print(f"agreement diffattr lin vs {label:14}: max |Δ| / max |τ| = {rel:.2e}, Pearson "
                  f"{np.corrcoef(a.ravel(), b.ravel())[0, 1]:.6f}, mean per-query Spearman {rho:.4f}")
        if not isinstance(theirs, str):
            print(f"time dattri lin / diffattr lin: {theirs['total_s'] / ours['total_s']:.1f}× (fit {theirs['fit_s'] / ours['fit_s']:.1f}×, "
                  f"score {theirs['score_s'] / ours['score_s']:.1f}×)")


if __name__ == "__main__":
    main()
