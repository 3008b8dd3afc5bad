"""Select-pool choice against the oracle's (issue 18, item 1), from a finished run's λ curves:

    python benchmarks/selection.py [RESULTS_DIR]        # default: results/

For each single-model kernel method (those with an oracle_lambda job): the λ chosen on the select
pool (rules ``best`` and ``smooth``: diffattr.evaluate.selection), the λ the lds pool would choose,
both LDS on the lds pool and their gap; then how often they agree and the largest gap (the issue's
target: within 0.02 of the oracle on both sets)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from diffattr.evaluate.selection import selection_table


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    curves = {}
    for oracle in sorted((root / "lambda_oracle").glob("*/full/0/seed0.csv")):
        method = oracle.parts[-4]
        select = root / "lambda" / method / "full" / "0" / "seed0.csv"
        if select.exists():
            curves[method] = (pd.read_csv(select), pd.read_csv(oracle))
    table = selection_table(curves)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    for rule, t in table.groupby("rule", sort=False):
        print(f"rule {rule}: agrees with the oracle {int(t['agree'].sum())} of {len(t)}; largest gap {t['gap'].max():.3f}; "
              f"mean gap {t['gap'].mean():.3f}; gaps ≤ 0.02: {int((t['gap'] <= 0.02).sum())} of {len(t)}")


if __name__ == "__main__":
    main()
