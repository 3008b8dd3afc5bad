"""Stacking against the select-pool size (issue 18, items 2 and the half-ceiling target; docs/methods.md
§2.19), from a finished run:

    python benchmarks/stacking.py [RESULTS_DIR] [--splits 40] [--sizes 4 8 12 16]   # default: results/

For every ``kind: stack`` method of the run and each attributed set, the select + lds subsets (drawn
alike, §4.2) are re-split ``--splits`` times into m that fit and the rest that judge. On each split,
from the components' standardised predictions (the stack's own u_c, :mod:`diffattr.methods.stack`),
by :func:`diffattr.evaluate.selection.stack_resplit_rows`:

- ``nnls``: the weights fit on the m subsets, the stack's LDS on the rest;
- ``equal``: every component 1/C (no fit);
- ``best single``: the component the m subsets prefer (rule ``best``), judged on the rest;
- ``oracle single``: the best component on the judging subsets themselves (a ceiling for choosing one).

It tells whether a larger select pool would raise the stack (the fit has C weights from m × n values)
and how far the stack is above choosing one method. Prints a Markdown table per stack and set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from diffattr.evaluate.lds import predicted_outputs
from diffattr.evaluate.selection import stack_resplit_rows
from diffattr.ground_truth import read_ground_truth
from diffattr.methods.stack import ComponentScores
from diffattr.subsets import read_pool


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from selection import study_args

    args, plan = study_args(__doc__.splitlines()[0])
    L = plan.layout
    pools = ("select", plan.lds_pool)
    masks = np.concatenate([read_pool(L.subset_masks.format(pool=p)) for p in pools])
    for method in plan.methods:
        block = plan.method(method)
        if plan.kind(method) != "stack" or block.get("fit", "nnls") != "nnls":
            continue
        for s in plan.method_sets(method):
            truth = np.concatenate([read_ground_truth(L.ground_truth.format(pool=p), s) for p in pools])
            parts = [ComponentScores(L.scores.format(method=c, set=s)) for c in block["methods"]]
            preds = [predicted_outputs(masks, c.blocks(), c.n_queries, -1) for c in parts]
            table = pd.DataFrame(stack_resplit_rows(preds, truth, args.sizes, args.splits))
            summary = table.drop(columns="split").groupby("size").mean().reset_index()
            print(f"\n## {method}, {s}: mean lds-side LDS over {args.splits} re-splits of {len(truth)} subsets "
                  f"(components {', '.join(block['methods'])})\n")
            print(summary.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
