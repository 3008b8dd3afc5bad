"""Figures of the HTML report: pure functions of the workflow's tables, each writing one PNG atomically.

Drawn with matplotlib's object API (a :class:`~matplotlib.figure.Figure` on an Agg canvas, no pyplot
state), like :mod:`diffattr.show`.

- :func:`lds_bars` — the linear datamodeling score (docs/methods.md §4.4) of every method on the val and gen
  sets (``results/lds.csv``): one horizontal bar per (method, set) with its bootstrap CI, methods best
  first by gen LDS, the split-half ground-truth ceiling as a dashed line per set. The oracle-λ
  diagnostics (λ tuned on the lds pool itself) are left out: they are not comparable results.
- :func:`lambda_curves` — the choice of the ridge λ of the kernel methods, D-TRAK's λ sweep: LDS
  against λ on the held-out "select" pool (solid; the chosen λ is marked) and, where present, on the
  lds pool the table reports (dashed), one panel per attributed set.
- :func:`counterfactual_plot` — counterfactual evaluation (docs/methods.md §4.5): per (method, k) the
  per-sample pixel L2 (↑), embedding cosine (↓) and ΔL_Simple (↑) between the original and the
  regenerated sample, as box plots with the samples overlaid; the random-removal control comes first
  and grey lines join one sample across methods at equal k.
- :func:`trajectory_plot` — Journey-TRAK (docs/methods.md §2.12): the LDS of the score from one DDIM step
  alone, step 0 the noisiest, with its CI band and the mean-over-steps method as a reference line.
- :func:`sweep_plot` — an ablation sweep (:mod:`diffattr.sweeps`): LDS against the swept value per set.
- :func:`runtime_plot` — wall-clock seconds and peak memory per Snakemake rule, from the ``benchmark:``
  files (:func:`read_benchmarks`, :func:`runtime_table`); :func:`method_runtime` — the seconds of each
  method's own jobs. Wall time lives only in these runtime tables and under ``benchmarks/``, never in
  a result file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DPI = 100
SETS = ("val", "gen")
"""Attributed sets in display order."""
SET_COLORS = {"val": "tab:blue", "gen": "tab:orange"}
EXCLUDED_KINDS = ("ceiling", "oracle", "diagnostic")
"""``kind`` values of lds.csv rows that are not bars: the ceiling and the oracle-λ diagnostics."""
BENCH_COLUMNS = ["rule", "job", "seconds", "max_rss_mb"]
RUNTIME_COLUMNS = ["rule", "jobs", "seconds_total", "seconds_mean", "seconds_max", "max_rss_mb"]
METHOD_RUNTIME_COLUMNS = ["method", "jobs", "seconds", "max_rss_mb"]


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    """A :class:`~matplotlib.figure.Figure` of ``width`` × ``height`` inches at :data:`DPI` on its own
    Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; the path."""
    from diffattr.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _no_data(ax: Any, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _ordered_sets(values: pd.Series) -> list[str]:
    present = list(dict.fromkeys(values.astype(str)))
    return [s for s in SETS if s in present] + sorted(s for s in present if s not in SETS)


# ------------------------------------------------------------------------------------------------- LDS

def lds_plot_data(table: pd.DataFrame) -> pd.DataFrame:
    """The bars of :func:`lds_bars`: rows ``method, set, lds, ci_low, ci_high`` without the ceiling and
    oracle rows, methods best first — by gen LDS, then methods lacking gen by val LDS, then the rest
    (ties by name) — and within a method the sets in :data:`SETS` order."""
    rows = table.loc[~table["kind"].isin(EXCLUDED_KINDS), ["method", "set", "lds", "ci_low", "ci_high"]]
    rows = rows.astype({"lds": float, "ci_low": float, "ci_high": float})
    lds = {(m, s): v for m, s, v in zip(rows["method"], rows["set"], rows["lds"])}

    def key(method: str) -> tuple[int, float, str]:
        for rank, split in enumerate(("gen", "val")):
            value = lds.get((method, split), np.nan)
            if np.isfinite(value):
                return rank, -float(value), method
        return 2, 0.0, method

    methods = sorted(dict.fromkeys(rows["method"]), key=key)
    sets = _ordered_sets(rows["set"])
    rows = rows.assign(_m=rows["method"].map({m: i for i, m in enumerate(methods)}),
                       _s=rows["set"].map({s: i for i, s in enumerate(sets)}))
    return rows.sort_values(["_m", "_s"]).drop(columns=["_m", "_s"]).reset_index(drop=True)


def lds_ceilings(table: pd.DataFrame) -> dict[str, float]:
    """Split-half ceiling LDS per set (rows of kind ``ceiling``)."""
    rows = table[table["kind"] == "ceiling"]
    return {str(s): float(v) for s, v in zip(rows["set"], rows["lds"]) if np.isfinite(float(v))}


def lds_bars(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Horizontal LDS bars per (method, set) with asymmetric CI error bars and the ceilings."""
    data = lds_plot_data(table)
    methods = list(dict.fromkeys(data["method"]))
    sets = _ordered_sets(data["set"]) if len(data) else []
    fig = new_figure(7.0, 1.2 + 0.22 * max(len(methods), 1) * max(len(sets), 1))
    ax = fig.add_subplot()
    if not methods:
        _no_data(ax)
    height = 0.8 / max(len(sets), 1)
    y_of = {m: len(methods) - 1 - i for i, m in enumerate(methods)}  # best on top
    for j, split in enumerate(sets):
        d = data[data["set"] == split]
        y = d["method"].map(y_of).to_numpy() + 0.4 - height * (j + 0.5)
        color = SET_COLORS.get(split, f"C{j + 2}")
        ax.barh(y, d["lds"], height=height, color=color, label=split)
        ok = np.isfinite(d["ci_low"].to_numpy()) & np.isfinite(d["ci_high"].to_numpy())
        low = np.maximum(d["lds"] - d["ci_low"], 0)[ok]
        high = np.maximum(d["ci_high"] - d["lds"], 0)[ok]
        ax.errorbar(d["lds"][ok], y[ok], xerr=[low, high], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    for j, (split, value) in enumerate(lds_ceilings(table).items()):
        color = SET_COLORS.get(split, f"C{j + 2}")
        ax.axvline(value, color=color, linestyle="--", linewidth=1.2, label=f"split-half ceiling ({split})")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(methods)), [m for m in reversed(methods)], fontsize=8)
    ax.set_ylim(-0.6, len(methods) - 0.4)
    ax.set_xlabel("LDS (Spearman)")
    ax.set_title("LDS (Spearman; Park et al. 2023)")
    if methods:
        ax.legend(fontsize=7, loc="lower right")
    save_png(fig, path)


# ---------------------------------------------------------------------------------------- λ selection

def lambda_series(curve: pd.DataFrame, split: str, pool: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of one set and pool with λ > 0, sorted by λ; those of them at the chosen λ)."""
    d = curve[(curve["set"] == split) & (curve["pool"] == pool)]
    d = d[d["lambda"].astype(float) > 0].sort_values("lambda", kind="stable")
    return d, d[d["chosen"].astype(str).str.lower() == "true"]


def lambda_curves(curves: dict[str, pd.DataFrame], path: str | os.PathLike) -> None:
    """LDS against λ per method, one panel per set: select pool solid, lds pool dashed, chosen λ marked."""
    from matplotlib.lines import Line2D

    frames = [c for c in curves.values() if len(c)]
    sets = _ordered_sets(pd.concat([c["set"] for c in frames])) if frames else []
    fig = new_figure(1.8 + 4.2 * max(len(sets), 1), 3.6)
    axes = fig.subplots(1, max(len(sets), 1), squeeze=False)[0]
    if not sets:
        _no_data(axes[0])
    handles = []
    for i, (method, curve) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for ax, split in zip(axes, sets):
            for pool, style, width in (("select", "-", 1.5), ("lds", "--", 0.8)):
                d, chosen = lambda_series(curve, split, pool)
                if len(d):
                    ax.plot(d["lambda"], d["lds"], linestyle=style, linewidth=width, color=color)
                    ax.plot(chosen["lambda"], chosen["lds"], "o", color=color, markersize=5,
                            markerfacecolor=color if pool == "select" else "white")
        handles.append(Line2D([], [], color=color, label=method))
    for ax, split in zip(axes, sets):
        ax.set_xscale("log")
        ax.set_xlabel("λ (relative)")
        ax.set_ylabel("LDS")
        ax.set_title(f"{split}: ridge λ sweep (select pool chooses)", fontsize=9)
    handles += [Line2D([], [], color="black", label="select pool"),
                Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="lds pool"),
                Line2D([], [], color="black", marker="o", linestyle="none", label="chosen λ")]
    if sets:
        fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    save_png(fig, path)


# ------------------------------------------------------------------------------------ counterfactual

COUNTERFACTUAL_METRICS = (("pixel_l2", "pixel L2 ↑"), ("embedding_cosine", "embedding cosine ↓"),
                          ("loss_change", "ΔL_Simple ↑"))


def counterfactual_groups(results: pd.DataFrame) -> list[tuple[str, int]]:
    """The (method, k) boxes in order: by k, and within a k the random-removal control first, then the
    methods by name."""
    from diffattr.counterfactual import RANDOM_CONTROL

    pairs = {(str(m), int(k)) for m, k in zip(results["method"], results["k"])}
    return sorted(pairs, key=lambda p: (p[1], p[0] != RANDOM_CONTROL, p[0]))


def counterfactual_metrics(results: pd.DataFrame) -> list[tuple[str, str]]:
    """The (column, label) of the metrics with at least one finite value."""
    return [(c, label) for c, label in COUNTERFACTUAL_METRICS
            if c in results and np.isfinite(results[c].astype(float)).any()]


def counterfactual_plot(results: pd.DataFrame, path: str | os.PathLike) -> None:
    """Box plot per (method, k) of each metric, samples as jittered points joined across methods."""
    groups = counterfactual_groups(results)
    metrics = counterfactual_metrics(results)
    fig = new_figure(1.0 + max(len(metrics), 1) * (1.2 + 0.45 * len(groups)), 4.2)
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    if not metrics:
        _no_data(axes[0], "no counterfactual metrics")
    position = {g: i for i, g in enumerate(groups)}
    for ax, (column, label) in zip(axes, metrics):
        d = results.dropna(subset=[column]).copy()
        d["x"] = [position[(str(m), int(k))] for m, k in zip(d["method"], d["k"])]
        d["x"] += np.random.default_rng(0).uniform(-0.15, 0.15, len(d))
        for _, same in d.sort_values("x").groupby(["k", "sample", "seed"]):
            if len(same) > 1:
                ax.plot(same["x"], same[column], color="0.8", linewidth=0.5, zorder=1)
        boxes = [d.loc[(d["method"] == m) & (d["k"] == k), column].to_numpy(float) for m, k in groups]
        kept = [i for i, b in enumerate(boxes) if len(b)]
        ax.boxplot([boxes[i] for i in kept], positions=kept, widths=0.6, showfliers=False, zorder=2)
        ax.scatter(d["x"], d[column], s=8, color="tab:red", alpha=0.6, zorder=3)
        ax.set_xticks(range(len(groups)), [f"{m}\nk={k}" for m, k in groups], rotation=60, fontsize=7)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_title(label, fontsize=9)
    fig.suptitle("Counterfactual evaluation (D-TRAK protocol, Zheng et al. 2024)")
    save_png(fig, path)


# ---------------------------------------------------------------------------------------- trajectory

def step_ticks(steps: pd.DataFrame, count: int = 6) -> tuple[list[int], list[str]]:
    """About ``count`` evenly spaced steps and their labels "step\\n(t=timestep)"."""
    d = steps.sort_values("step")
    if not len(d):
        return [], []
    index = np.unique(np.linspace(0, len(d) - 1, min(count, len(d))).round().astype(int))
    rows = d.iloc[index]
    return ([int(s) for s in rows["step"]],
            [f"{int(s)}\n(t={int(t)})" for s, t in zip(rows["step"], rows["timestep"])])


def trajectory_plot(steps: pd.DataFrame, path: str | os.PathLike, overall: float | None = None) -> None:
    """LDS of the single-step Journey-TRAK score against the DDIM step, CI shaded, mean as reference."""
    d = steps.sort_values("step")
    fig = new_figure(6.5, 3.6)
    ax = fig.add_subplot()
    ax.fill_between(d["step"], d["ci_low"].astype(float), d["ci_high"].astype(float), color="tab:blue",
                    alpha=0.25, linewidth=0, label="bootstrap CI")
    ax.plot(d["step"], d["lds"], marker="o", markersize=3, color="tab:blue", label="LDS of one step")
    if overall is not None:
        ax.axhline(overall, color="tab:red", linestyle="--", label="mean over steps (journey_trak)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(*step_ticks(d))
    ax.set_xlabel("DDIM step (timestep)")
    ax.set_ylabel("LDS (Spearman)")
    ax.set_title("Journey-TRAK per sampler step (Georgiev et al. 2023)")
    ax.legend(fontsize=7)
    save_png(fig, path)


# --------------------------------------------------------------------------------------------- sweeps

def sweep_plot(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """LDS against the swept value (in the sweep's order), one line per attributed set, CI whiskers."""
    values = list(dict.fromkeys(table["value"].astype(str)))
    fig = new_figure(1.5 + 0.9 * max(len(values), 3), 3.4)
    ax = fig.add_subplot()
    if not len(table):
        _no_data(ax)
    for split in _ordered_sets(table["set"]) if len(table) else []:
        d = table[table["set"] == split].copy()
        x = [values.index(v) for v in d["value"].astype(str)]
        lds, low, high = (d[c].astype(float).to_numpy() for c in ("lds", "ci_low", "ci_high"))
        err = np.nan_to_num(np.vstack([lds - low, high - lds]), nan=0.0)
        ax.errorbar(x, lds, yerr=err, marker="o", capsize=3, color=SET_COLORS.get(split), label=split)
    ax.axhline(0.0, color="black", linewidth=0.8)
    long = any(len(v) > 10 for v in values)  # a grid's "dim=4096, timesteps=20"
    ax.set_xticks(range(len(values)), values, rotation=30 if long else 0, ha="right" if long else "center")
    key = str(table["key"].iloc[0]) if len(table) else ""
    ax.set_xlabel(f"{key} ({table['method'].iloc[0].split('__')[0] if len(table) else ''})")
    ax.set_ylabel("LDS (Spearman)")
    ax.set_title(f"Sweep {table['sweep'].iloc[0] if len(table) else ''}: LDS vs {key}", fontsize=9)
    if len(table):
        ax.legend(fontsize=7)
    save_png(fig, path)


# -------------------------------------------------------------------------------------------- runtime

def read_benchmarks(root: str | os.PathLike) -> pd.DataFrame:
    """One row per Snakemake benchmark TSV under ``{root}/benchmarks``: rule, job, mean seconds and
    peak RSS (MB; "-" or "NA" → NaN), sorted by rule and job."""
    base = Path(root) / "benchmarks"
    rows = []
    for file in sorted(base.rglob("*.tsv")) if base.is_dir() else []:
        parts = file.relative_to(base).with_suffix("").parts
        tsv = pd.read_csv(file, sep="\t", na_values=["-", "NA"])
        rows.append({"rule": parts[0], "job": "/".join(parts[1:]),
                     "seconds": pd.to_numeric(tsv["s"], errors="coerce").mean(),
                     "max_rss_mb": pd.to_numeric(tsv["max_rss"], errors="coerce").max()})
    table = pd.DataFrame(rows, columns=BENCH_COLUMNS).astype({"seconds": float, "max_rss_mb": float})
    return table.sort_values(["rule", "job"]).reset_index(drop=True)


def runtime_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Per rule: job count, total / mean / max seconds and peak RSS (MB), longest total first."""
    table = bench.groupby("rule", sort=True).agg(
        jobs=("seconds", "size"), seconds_total=("seconds", "sum"), seconds_mean=("seconds", "mean"),
        seconds_max=("seconds", "max"), max_rss_mb=("max_rss_mb", "max")).reset_index()
    table = table.sort_values("seconds_total", ascending=False, kind="stable")
    return table[RUNTIME_COLUMNS].reset_index(drop=True)


def method_runtime(benchmarks: dict[str, list[str]]) -> pd.DataFrame:
    """Per method (in the given order): how many of its own jobs' benchmark files exist (λ selection,
    residuals, scoring — not the feature and kernel jobs it shares), the sum of their wall seconds
    (the last row of each file: its latest run) and their largest peak RSS (MB)."""
    rows = []
    for method, paths in benchmarks.items():
        last = [pd.read_csv(p, sep="\t", na_values=["-", "NA"]).iloc[-1:] for p in paths if Path(p).exists()]
        tsv = pd.concat(last) if last else pd.DataFrame({"s": [], "max_rss": []})
        rows.append({"method": method, "jobs": len(last), "seconds": float(pd.to_numeric(tsv["s"], errors="coerce").sum()),
                     "max_rss_mb": float(pd.to_numeric(tsv["max_rss"], errors="coerce").max())})
    return pd.DataFrame(rows, columns=METHOD_RUNTIME_COLUMNS)


def runtime_plot(summary: pd.DataFrame, path: str | os.PathLike) -> None:
    """Two horizontal bar panels per rule: total seconds (job count annotated) and peak RSS (MB)."""
    fig = new_figure(9.0, 1.2 + 0.25 * max(len(summary), 1))
    left, right = fig.subplots(1, 2, sharey=True)
    for ax in (left, right) if summary.empty else ():
        _no_data(ax, "no benchmarks")
    y = np.arange(len(summary))[::-1]  # longest on top
    left.barh(y, summary["seconds_total"], color="tab:blue")
    for yi, total, jobs in zip(y, summary["seconds_total"], summary["jobs"]):
        left.annotate(f" {int(jobs)} job{'s' if jobs != 1 else ''}", (total, yi), va="center", fontsize=7)
    right.barh(y, summary["max_rss_mb"].fillna(0.0), color="tab:green")
    left.set_yticks(y, list(summary["rule"]), fontsize=8)
    left.set_xlabel("total seconds")
    left.set_title("Wall-clock time per rule", fontsize=9)
    right.set_xlabel("peak RSS (MB)")
    right.set_title("Peak memory per rule", fontsize=9)
    left.margins(x=0.2)
    save_png(fig, path)
