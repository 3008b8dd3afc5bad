"""Time and peak memory per method of a finished run, from Snakemake's ``benchmark:`` files.

    python benchmarks/methods.py                         # the default run (config.yaml, results/)
    python benchmarks/methods.py config/smoke.yaml       # a run with an overlay config

Per method: its own jobs (scoring, λ selection, DAS residuals, Journey-TRAK's per-step scores) and
the jobs it reads: feature jobs (featurize, gather, partial Grams and kernels of its specs on its
models; Journey-TRAK's trajectory), and for the retraining family and the encoded ensemble the
training (and measuring) of the retrained models they need. Those jobs are shared: a spec used by
several methods is counted in full for each of them (``shared_s``), since each would pay it alone. Peak memory is the largest ``max_rss`` (MB) over all those jobs. For EK-FAC against
kronfluence-as-is and dattri on the same model see ``benchmarks/ekfac.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from diffattr.cli import REPO, load_config


def _read(paths: list[Path]) -> tuple[float, float]:
    frames = [pd.read_csv(p, sep="\t").iloc[-1:] for p in paths if p.exists()]
    if not frames:
        return float("nan"), float("nan")
    table = pd.concat(frames)
    return float(table["s"].sum()), float(pd.to_numeric(table["max_rss"], errors="coerce").max())


def method_table(config: dict) -> pd.DataFrame:
    out = Path(config["output_dir"]) / "benchmarks"
    full_seed = config["full_model"]["seeds"][0]
    rows = []
    for name in config["evaluation"].get("methods") or config["methods"]:
        method = config["methods"][name]
        own = [out / "score" / name / f"{s}.tsv" for s in config["evaluation"]["sets"]]
        own += list((out / "select_lambda" / name).rglob("*.tsv")) + list((out / "residuals" / name).rglob("*.tsv"))
        own += [out / "score_trajectory" / f"{name}.tsv"]
        specs = method.get("features", [])
        specs = [specs] if isinstance(specs, str) else specs
        models = method.get("models", {"pool": "full", "count": 1}) if isinstance(method.get("models"), dict) else None
        shared = []
        for spec in specs:
            if models and models["pool"] == "retrain":
                keys = [f"retrain/{k}/seed0" for k in range(models["count"])]
            else:
                keys = [f"full/0/seed{s}" for s in config["full_model"]["seeds"][: (models or {}).get("count", 1)]] or [f"full/0/seed{full_seed}"]
            for key in keys:
                for rule in ("featurize", "gather_features", "gram_partial", "kernel"):
                    shared += list((out / rule / spec / key).rglob("*.tsv")) + [out / rule / spec / f"{key}.tsv"]
        if method.get("query") == "journey":
            shared.append(out / "trajectory.tsv")
        if method["kind"] == "retraining":
            shared += [out / "train_model" / "retrain" / str(k) / "seed0.tsv" for k in range(method["models"])]
            shared += list((out / "measure_outputs" / "retrain").glob("part*.tsv"))  # several models per job
        if method["kind"] == "encoded":
            shared += list((out / "train_model" / "encoded").rglob("*.tsv"))
        own_s, own_rss = _read(own)
        shared_s, shared_rss = _read(shared)
        rows.append({"method": name, "kind": method["kind"], "own_s": own_s, "shared_s": shared_s,
                     "total_s": own_s + (0 if pd.isna(shared_s) else shared_s),
                     "peak_rss_mb": max(own_rss, shared_rss) if not pd.isna(shared_rss) else own_rss})
    return pd.DataFrame(rows).sort_values("total_s", ascending=False)


if __name__ == "__main__":
    table = method_table(load_config(REPO, sys.argv[1:]))
    print(table.round(1).to_string(index=False))
