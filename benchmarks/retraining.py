"""Fit time and peak memory of empirical influence and datamodels (docs/methods.md §2.14, §2.15):
diffattr's vectorised fits vs a per-query sklearn ``RidgeCV(alphas=[0.1, 1, 10], cv=5)`` loop (the
D-TRAK notebooks' protocol).

    python benchmarks/retraining.py                       # M ∈ {64, 128, 256, 512}, N = 1500, Q = 200
    python benchmarks/retraining.py --sklearn-queries 5 --threads 2

Synthetic inputs: random 50 % masks (M × N) and outputs from a planted linear datamodel plus
noise (M × Q); timings do not depend on the values. The sklearn loop is timed on the first
``--sklearn-queries`` queries only and **extrapolated** linearly to Q (its cost is the same for
every query); the printed agreement (rel. Δw) is max|Δw| / max|w| between the two on those queries.
Peak memory is tracemalloc's peak of Python/numpy allocations during the fit (inputs excluded;
BLAS/LAPACK internal workspaces are not traced).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from diffattr.methods.retraining import DEFAULT_ALPHAS, empirical_influence, fit_datamodels


def measure(fn: Callable[[], object], repeats: int = 1) -> tuple[float, float, object]:
    """(best wall seconds over ``repeats``, peak traced MiB of one call, result)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return best, peak, result


def sklearn_loop(masks: np.ndarray, outputs: np.ndarray, queries: int) -> np.ndarray:
    from sklearn.linear_model import RidgeCV

    x = masks.astype(np.float64)
    return np.stack([RidgeCV(alphas=list(DEFAULT_ALPHAS), cv=5).fit(x, outputs[:, q]).coef_ for q in range(queries)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sklearn-queries", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n, q = args.train, args.queries
    print(f"N = {n} training samples, Q = {q} queries, {args.threads} BLAS thread(s); sklearn RidgeCV loop timed on "
          f"{args.sklearn_queries} queries and extrapolated ×{q / args.sklearn_queries:g} to Q = {q}")
    header = (f"{'M':>5} | {'EI s':>7} {'EI MiB':>7} | {'DM s':>7} {'DM MiB':>7} | "
              f"{'sklearn s/query':>15} {'sklearn s (Q, extrap.)':>22} {'sk MiB/query':>12} | {'speed-up':>8} | "
              f"{'rel. Δw':>8} | α chosen (0.1/1/10)")
    print(header)
    print("-" * len(header))
    with threadpool_limits(limits=args.threads):
        for m in args.models:
            masks = rng.random((m, n)) < 0.5
            w = rng.normal(scale=1e-3, size=(q, n))
            outputs = 0.05 + masks @ w.T + rng.normal(scale=0.02, size=(m, q))
            ei_s, ei_mib, _ = measure(lambda: empirical_influence(masks, outputs), args.repeats)
            dm_s, dm_mib, fit = measure(lambda: fit_datamodels(masks, outputs), args.repeats)
            k = args.sklearn_queries
            sk_s, sk_mib, sk_w = measure(lambda: sklearn_loop(masks, outputs, k))
            per_query = sk_s / k
            diff = float(np.abs(sk_w - fit.weights[:k]).max() / np.abs(sk_w).max())
            counts = "/".join(str(c) for c in fit.alpha_counts().values())
            print(f"{m:>5} | {ei_s:>7.3f} {ei_mib:>7.1f} | {dm_s:>7.3f} {dm_mib:>7.1f} | {per_query:>15.3f} "
                  f"{per_query * q:>22.1f} {sk_mib:>12.1f} | {per_query * q / dm_s:>7.0f}× | {diff:>8.1e} | {counts}")


if __name__ == "__main__":
    main()
