"""Select-pool choice against the oracle's (issue 18, item 1; docs/methods.md §4.6), from a finished run:

    python benchmarks/selection.py [RESULTS_DIR] [--splits 40] [--sizes 4 8 12 16]   # default: results/

Cases: each single-model kernel method's λ grid (its features and kernel re-solved at every λ) and,
when the run has one, the ``recommended`` select method's candidates (their score stores). For each
case and attributed set, rules ``best`` and ``one_se`` (evaluation.select; 200 paired draws):

1. the run's own pools: chosen on select, judged on lds (gap to the lds pool's argmax, agreement);
2. re-splits of the select + lds subsets (drawn alike, §4.2) into m that choose and the rest that
   judge, ``--splits`` draws per m: how the agreement and the gap change with the select-pool size.

Prints both tables (Markdown) and the summary lines the README quotes."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from diffattr.choose import SelectSettings
from diffattr.evaluate.selection import pool_rows, resplit_rows
from diffattr.evaluate.table import method_predictions
from diffattr.ground_truth import read_ground_truth
from diffattr.methods.trak import larger_first, lambda_predictions, read_residual
from diffattr.query import run_config
from diffattr.subsets import read_pool
from diffattr.workflow.plan import Plan

RULES = {"best": SelectSettings("best"), "one_se": SelectSettings("one_se", resamples=200, seed=0)}


def run_plan(root: Path) -> Plan:
    """The finished run's plan, from the merged config its start recorded (run.json)."""
    config, workdir = run_config(root)
    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml").read_text())
    return Plan.of(config, schema, workdir)


def cases(plan: Plan):
    """(case, set, order, {pool: (predictions, truth)}) of every λ grid and of the recommended method."""
    L = plan.layout
    pools = {p: (L.subset_masks.format(pool=p), L.ground_truth.format(pool=p)) for p in ("select", plan.lds_pool)}
    for method, models in plan.oracle_models.items():
        block, (pool, subset, seed) = plan.method(method), models[0]
        spec = plan.method_specs(method)[0]
        where = {"pool": pool, "subset": subset, "seed": seed}
        queries = {s: plan.features(spec, models[0], plan.query_split(method, s)) for s in plan.method_sets(method)}
        residual = read_residual(L.residual.format(method=plan.residual_owner(method, models[0]), **where) if block.get("residual") else None)
        preds, truths, _ = lambda_predictions(L.kernel.format(spec=spec, **where), plan.features(spec, models[0], "train"),
                                              queries, pools, block["lambdas"], "cpu", block.get("normalize", "none"),
                                              residual)
        for s in queries:
            yield f"{method} λ", s, larger_first(block["lambdas"]), {p: (preds[s, p], truths[s, p]) for p in pools}
    for method in plan.methods:
        if plan.kind(method) != "select":
            continue
        for s in plan.method_sets(method):
            by_pool = {}
            for p, (masks, truth) in pools.items():
                m = read_pool(masks)
                by_pool[p] = ([method_predictions(L.scores.format(method=c, set=s), m)[0] for c in plan.method(method)["methods"]],
                              read_ground_truth(truth, s))
            yield f"{method} (methods)", s, list(range(len(plan.method(method)["methods"]))), by_pool


def study_args(description: str) -> tuple[argparse.Namespace, Plan]:
    """The re-split studies' command line (RESULTS_DIR, --splits, --sizes) and the run's plan."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("results", nargs="?", default="results")
    parser.add_argument("--splits", type=int, default=40)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 12, 16])
    args = parser.parse_args()
    return args, run_plan(Path(args.results))


def main() -> None:
    args, plan = study_args(__doc__.splitlines()[0])
    own, resplit = [], []
    for case, split, order, by_pool in cases(plan):
        (sel, sel_y), (lds, lds_y) = by_pool["select"], by_pool[plan.lds_pool]
        tag = {"case": case, "set": split}
        own += [tag | r for r in pool_rows(sel, sel_y, lds, lds_y, RULES, order)]
        resplit += [tag | r for r in resplit_rows(sel, sel_y, lds, lds_y, RULES, order, args.sizes, args.splits)]
        print(f"{case} {split}: done", flush=True)
    own, resplit = pd.DataFrame(own), pd.DataFrame(resplit)
    print("\n## The run's pools: chosen on select, judged on lds\n")
    print(own.drop(columns=["size", "split"]).to_markdown(index=False, floatfmt=".3f"))
    for rule, t in own.groupby("rule", sort=False):
        print(f"rule {rule}: agrees with the oracle {int(t['agree'].sum())} of {len(t)}; gap ≤ 0.02 in "
              f"{int((t['gap'] <= 0.02).sum())} of {len(t)}; mean gap {t['gap'].mean():.3f}; largest {t['gap'].max():.3f}")
    total = len(read_pool(plan.layout.subset_masks.format(pool="select")))
    print(f"\n## Re-splits of the select + lds subsets ({args.splits} per size; select pool of the run: {total})\n")
    summary = (resplit.groupby(["size", "rule"], sort=True)
               .agg(agree=("agree", "mean"), mean_gap=("gap", "mean"), gap_le_002=("gap", lambda g: float(np.mean(g <= 0.02))),
                    p90_gap=("gap", lambda g: float(np.quantile(g, 0.9)))).reset_index())
    print(summary.to_markdown(index=False, floatfmt=".3f"))
    by_case = resplit.groupby(["case", "size", "rule"], sort=True).agg(agree=("agree", "mean"), mean_gap=("gap", "mean"))
    print("\n" + by_case.reset_index().to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
