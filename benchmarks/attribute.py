"""Issue 16 benchmark (a): top-k/bottom-k time and peak RSS against N on disk-backed score stores.

For each N, a score store of Q queries × N float32 scores (seeded standard normal, written block by
block, never Q × N in this process for the tiled layout) is ranked by
:func:`diffattr.topk.top_and_bottom` in a fresh subprocess, which reports its wall time and peak
RSS (VmHWM; :func:`peak_rss_mb` says why not ``ru_maxrss``), once after its imports and once after
the ranking; median time and largest peak of ``--repeat`` such subprocesses. Target: peak RSS flat within ±20 % across N, time linear in N (the table prints ns per
score, which should stay constant).

Two store layouts, because a compressed chunk is decoded whole:

- ``tiled``: chunks of Q × ``--cols`` (what a flat-memory reader needs);
- ``write_scores``: :func:`diffattr.scores.write_scores` with the score rule's ``block_rows=256``,
  i.e. chunks min(256, Q) × min(N, SCORE_COLUMNS) — the layout score stores have (N wide before
  2026-12-02, which decoded whole chunks per block read: benchmarks/README.md).

    .venv/bin/python benchmarks/attribute.py                      # N = 10 k, 100 k, 1 M; k = 10
    .venv/bin/python benchmarks/attribute.py --k 2048 --layouts tiled

Disk: Q × N × 4 bytes per store (400 MB at Q = 100, N = 1 M), one store at a time, deleted after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = ("tiled", "write_scores")


def column_block(seed: int, n_queries: int, c0: int, c1: int) -> np.ndarray:
    """Scores[:, c0:c1]: a pure function of (seed, c0), so both layouts hold the same numbers when
    written with the same block width."""
    return np.random.default_rng([seed, c0]).standard_normal((n_queries, c1 - c0), dtype=np.float32)


def write_tiled(path: Path, n_queries: int, n_train: int, cols: int, seed: int, sign: int) -> None:
    """A checked store (array_options, seal) with chunks n_queries × cols, written column block by block."""
    import zarr

    from diffattr.atomic import atomic_path
    from diffattr.integrity import array_options, seal

    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"method": "synthetic", "sign": sign})
        arr = root.create_array("scores", shape=(n_queries, n_train), dtype="float32",
                                chunks=(n_queries, min(cols, n_train)), **array_options())
        seal(root)
        for c0 in range(0, n_train, cols):
            c1 = min(c0 + cols, n_train)
            arr[:, c0:c1] = column_block(seed, n_queries, c0, c1)


def write_row_layout(path: Path, n_queries: int, n_train: int, cols: int, seed: int, sign: int) -> None:
    """The same numbers through :func:`diffattr.scores.write_scores` (block_rows=256, its own chunks)."""
    from diffattr.scores import write_scores

    def block(start: int, stop: int) -> np.ndarray:
        return np.concatenate([column_block(seed, n_queries, c0, min(c0 + cols, n_train))[start:stop]
                               for c0 in range(0, n_train, cols)], axis=1)

    write_scores(path, n_queries, n_train, block, block_rows=256, attrs={"method": "synthetic", "sign": sign})


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB: VmHWM of /proc/self/status, the peak of
    this process's own address space. ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the fallback
    off Linux) is not usable in a child on Linux: exec carries the forking parent's peak over into
    it (measured here: a child of a parent that had held 520 MB reported 521 MB before any work)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(store: str, k: int, rows: int, cols: int) -> None:
    """Rank one store and print {seconds, import_rss_mb, peak_rss_mb, digest} as JSON."""
    from diffattr.topk import top_and_bottom

    after_import = peak_rss_mb()
    start = time.perf_counter()
    result = top_and_bottom(store, k, rows=rows, cols=cols)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(result.top_index.tobytes() + result.bottom_index.tobytes()
                            + result.top_score.tobytes() + result.bottom_score.tobytes()).hexdigest()[:12]
    print(json.dumps({"seconds": seconds, "import_rss_mb": after_import, "peak_rss_mb": peak_rss_mb(),
                      "digest": digest}))


def brute_digest(path: Path, k: int) -> str:
    """The same digest from a full-matrix argsort (only for small N): independent check of the run."""
    from diffattr.scores import open_scores

    tau = np.asarray(open_scores(path)[:])
    sign = -1
    r = -float(sign) * tau.astype(np.float64)
    j = np.broadcast_to(np.arange(tau.shape[1]), tau.shape)
    top = np.lexsort((j, -r), axis=1)[:, :k]
    bottom = np.lexsort((j, r), axis=1)[:, :k]
    score = tau.astype(np.float64)
    return hashlib.sha256(top.astype(np.int64).tobytes() + bottom.astype(np.int64).tobytes()
                          + np.take_along_axis(score, top, 1).tobytes()
                          + np.take_along_axis(score, bottom, 1).tobytes()).hexdigest()[:12]


def run_child(store: Path, k: int, rows: int, cols: int, repeat: int) -> dict:
    """Rank ``store`` in ``repeat`` fresh subprocesses: the median time, the largest peaks, one digest."""
    runs = [_one_child(store, k, rows, cols) for _ in range(repeat)]
    assert len({r["digest"] for r in runs}) == 1, "runs of the same store disagree"
    return {"seconds": float(np.median([r["seconds"] for r in runs])),
            "import_rss_mb": max(r["import_rss_mb"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "digest": runs[0]["digest"]}


def _one_child(store: Path, k: int, rows: int, cols: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(store), "--k", str(k), "--rows", str(rows),
                          "--cols", str(cols)], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=65536)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--dir", default=None, help="where the temporary stores go (default: the system's temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="fresh subprocesses per store (median time, max RSS)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.k, args.rows, args.cols)
        return

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{os.cpu_count()} cores; Q = {args.queries}, k = {args.k}, blocks {args.rows} × {args.cols}")
    print(f"median of {args.repeat} runs per store")
    print("| layout | N | store MB | write s | top-k s | ns / score | RSS after imports MB | peak RSS MB | check |")
    print("|---|---|---|---|---|---|---|---|---|")
    writers = {"tiled": write_tiled, "write_scores": write_row_layout}
    reference: dict[int, tuple[str, str]] = {}
    for n_train in args.sizes:
        for layout in args.layouts:
            with tempfile.TemporaryDirectory(dir=args.dir, prefix="topk-bench-") as tmp:
                store = Path(tmp) / f"{layout}-{n_train}.zarr"
                start = time.perf_counter()
                writers[layout](store, args.queries, n_train, args.cols, args.seed, sign=-1)
                write_s = time.perf_counter() - start
                size_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e6
                got = run_child(store, args.k, args.rows, args.cols, args.repeat)
                if n_train not in reference:  # brute force where it fits, else the first layout's result
                    reference[n_train] = ((brute_digest(store, args.k), "brute force") if n_train <= 100_000
                                          else (got["digest"], layout))
                want, source = reference[n_train]
                check = f"= {source}" if got["digest"] == want else f"DIFFERS from {source}"
                ns = got["seconds"] / (args.queries * n_train) * 1e9
                print(f"| {layout} | {n_train:,} | {size_mb:.0f} | {write_s:.1f} | {got['seconds']:.2f} | {ns:.1f} "
                      f"| {got['import_rss_mb']:.0f} | {got['peak_rss_mb']:.0f} | {check} |", flush=True)
                shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
