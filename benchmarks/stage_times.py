"""Wall time and peak memory per rule of a finished run, from Snakemake's ``benchmark:`` files.

    python benchmarks/stage_times.py results            # the default run
    python benchmarks/stage_times.py results/smoke

Prints, per rule: jobs, total and mean seconds, and the largest peak RSS (max_rss, MB).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def stage_times(output_dir: str) -> pd.DataFrame:
    rows = []
    root = Path(output_dir) / "benchmarks"
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0].removesuffix(".tsv")
        bench = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": rule, "s": float(bench["s"].iloc[-1]), "max_rss": float(pd.to_numeric(bench["max_rss"], errors="coerce").iloc[-1])})
    table = pd.DataFrame(rows)
    return (table.groupby("rule", sort=False)
            .agg(jobs=("s", "size"), total_s=("s", "sum"), mean_s=("s", "mean"), peak_rss_mb=("max_rss", "max"))
            .sort_values("total_s", ascending=False))


if __name__ == "__main__":
    table = stage_times(sys.argv[1] if len(sys.argv) > 1 else "results")
    print(table.round(1).to_string())
    print(f"\nsum of job times: {table['total_s'].sum():.0f} s")
