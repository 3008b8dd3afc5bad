"""Fixed cost per workflow job, by rule: what a job pays before it does any work (issue 17, item 2).

    python benchmarks/job_overhead.py                       # this checkout
    python benchmarks/job_overhead.py --root /tmp/ovh_base  # another checkout (e.g. a worktree at HEAD)
    python benchmarks/job_overhead.py --root /tmp/ovh_base --root .   # before/after, runs interleaved

Each rule's script runs its own imports in a fresh interpreter (``PYTHONPATH=ROOT``), ``--repeats``
times, and the median of each phase is printed:

- ``torch``: ``import torch``;
- ``imports``: the script's own top-level imports (read from ``ROOT/workflow_scripts/RULE.py``, so
  the figure follows the script), after torch;
- ``threads``: :func:`diffattr.jobs.limit_threads` (what ``job()`` does before the work);
- ``model``: :func:`diffattr.models.family.load_model` of a smoke-sized DDPM checkpoint (the
  ``model`` block of ``ROOT/config.yaml``), for rules that load a model;
- ``data``: :func:`diffattr.data.store.read_images` of a 300-image train split, for rules that read
  the image store;
- ``total``: the sum; ``process``: the child's wall time from start to exit (interpreter start-up
  and shutdown included).

The checkpoint and the store are made once per run in a temporary directory with the checkout's own
code. Find what dominates ``imports`` with ``python -X importtime -c "import diffattr.train"``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RULES: dict[str, tuple[bool, bool]] = {
    # rule (workflow script) → (loads a model, reads the image store)
    "train_model": (True, True),
    "counterfactual_train": (True, True),
    "featurize": (True, True),
    "measure_outputs": (True, True),
    "generate": (True, False),
    "trajectory": (True, False),
    "residuals": (True, True),
    "counterfactual_evaluate": (True, True),
    "select_lambda": (False, False),
    "score": (False, False),
    "gram_partial": (False, False),
}
PHASES = ("torch", "imports", "threads", "model", "data")


def script_imports(script: str | Path) -> list[str]:
    """The top-level ``import``/``from … import`` statements of a workflow script, as source lines."""
    tree = ast.parse(Path(script).read_text())
    return [ast.unparse(node) for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]


def smoke_model_params(root: str | Path) -> dict:
    """The ``model`` block of ``ROOT/config.yaml`` (the default, smoke-sized DDPM)."""
    import yaml

    return yaml.safe_load((Path(root) / "config.yaml").read_text())["model"]


def make_fixtures(workdir: str, params: dict) -> dict[str, str]:
    """A random-init checkpoint of ``params`` and a 300-image train store under ``workdir``, written
    with the imported checkout's own code; their paths by name."""
    import numpy as np

    from diffattr.data import ImageSet
    from diffattr.data.store import write_image_store
    from diffattr.models.family import fresh_model, save_model

    ckpt, store = os.path.join(workdir, "model.safetensors"), os.path.join(workdir, "data.zarr")
    save_model(fresh_model(params, seed=0), ckpt, {"step": 0})
    unet = params["unet"]
    shape = (300, unet["sample_size"], unet["sample_size"], unet["in_channels"])
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    write_image_store(store, {"train": ImageSet(images, np.zeros(300, np.int64), ["bench"] * 300, ["x"])})
    return {"model": ckpt, "store": store}


def child(rule_script: str, loads_model: bool, reads_data: bool, fixtures: dict[str, str], params: dict) -> dict:
    """Phase times (s) of one job's fixed cost, run in this (fresh) interpreter."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    import torch  # noqa: F401

    times["torch"] = time.perf_counter() - start
    start = time.perf_counter()
    for line in script_imports(rule_script):
        exec(line, {})
    times["imports"] = time.perf_counter() - start
    start = time.perf_counter()
    from diffattr.jobs import limit_threads

    limit_threads(1)
    times["threads"] = time.perf_counter() - start
    if loads_model:
        start = time.perf_counter()
        from diffattr.models.family import load_model

        load_model(fixtures["model"], params, "cpu")
        times["model"] = time.perf_counter() - start
    if reads_data:
        start = time.perf_counter()
        from diffattr.data.store import read_images

        read_images(fixtures["store"], "train")
        times["data"] = time.perf_counter() - start
    times["heavy"] = sorted(m for m in ("transformers", "peft", "matplotlib", "scipy", "pandas", "sklearn")
                            if m in sys.modules)
    times["diffattr"] = sys.modules["diffattr"].__file__
    return times


def run_child(root: Path, args: list[str]) -> tuple[dict, float]:
    """Run this file in a fresh interpreter with ``PYTHONPATH=root``; its JSON answer and wall time."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if "diffattr" in answer and not Path(answer["diffattr"]).resolve().is_relative_to(root):
        raise RuntimeError(f"the child imported diffattr from {answer['diffattr']}, not from {root}")
    return answer, wall


def median_row(runs: list[tuple[dict, float]]) -> dict:
    """Per phase, the median over repeats; ``total`` the median of per-run sums; ``process`` of walls."""
    row = {p: statistics.median(r[p] for r, _ in runs) for p in PHASES if p in runs[0][0]}
    row["total"] = statistics.median(sum(r[p] for p in PHASES if p in r) for r, _ in runs)
    row["process"] = statistics.median(w for _, w in runs)
    row["heavy"] = runs[0][0]["heavy"]
    return row


def table(rows: dict[str, dict]) -> str:
    """A Markdown table of the per-rule rows (seconds)."""
    cols = (*PHASES, "total", "process")
    lines = ["| rule | " + " | ".join(cols) + " | heavy modules loaded |", "|---" * (len(cols) + 2) + "|"]
    for rule, row in rows.items():
        cells = [f"{row[c]:.2f}" if c in row else "–" for c in cols]
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {', '.join(row['heavy']) or '–'} |")
    return "\n".join(lines)


def comparison(rows: dict[str, dict[str, dict]]) -> str:
    """A Markdown table of ``total`` and ``process`` per rule, one column pair per checkout."""
    roots = list(rows)
    head = " | ".join(f"total, {r} | process, {r}" for r in roots)
    lines = [f"| rule | {head} |", "|---" * (2 * len(roots) + 1) + "|"]
    for rule in rows[roots[0]]:
        cells = " | ".join(f"{rows[r][rule]['total']:.2f} | {rows[r][rule]['process']:.2f}" for r in roots)
        lines.append(f"| {rule} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", action="append", help="checkout to measure (repeat the flag to compare "
                        "checkouts; their runs interleave, so all see the same machine load); default this one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rules", nargs="*", default=list(RULES))
    parser.add_argument("--child", nargs=2, metavar=("RULE", "FIXTURES_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--make-fixtures", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    roots = [Path(r).resolve() for r in (args.root or [Path(__file__).resolve().parents[1]])]
    if args.make_fixtures:
        print(json.dumps(make_fixtures(args.make_fixtures, smoke_model_params(roots[0]))))
        return
    if args.child:
        rule, fixtures = args.child
        loads_model, reads_data = RULES[rule]
        print(json.dumps(child(roots[0] / "workflow_scripts" / f"{rule}.py", loads_model, reads_data,
                               json.loads(fixtures), smoke_model_params(roots[0]))))
        return
    load_before = os.getloadavg()[0]
    rows: dict[str, dict[str, dict]] = {str(r): {} for r in roots}
    with tempfile.TemporaryDirectory() as tmp:
        fixtures = {}
        for i, root in enumerate(roots):
            os.makedirs(f"{tmp}/{i}")
            fixtures[root], _ = run_child(root, ["--root", str(root), "--make-fixtures", f"{tmp}/{i}"])
        for rule in args.rules:
            runs: dict[Path, list] = {r: [] for r in roots}
            for _ in range(args.repeats):
                for root in roots:
                    runs[root].append(run_child(root, ["--root", str(root), "--child", rule, json.dumps(fixtures[root])]))
            for root in roots:
                rows[str(root)][rule] = median_row(runs[root])
            print(rule, " ".join(f"{rows[str(r)][rule]['total']:.2f}" for r in roots), file=sys.stderr, flush=True)
    print(f"median of {args.repeats} fresh processes per rule and checkout; "
          f"load average {load_before:.2f} → {os.getloadavg()[0]:.2f}")
    for root in roots:
        print(f"\n### {root}\n\n{table(rows[str(root)])}")
    if len(roots) > 1:
        print(f"\n### comparison (seconds)\n\n{comparison(rows)}")

if __name__ == "__main__":
    main()
