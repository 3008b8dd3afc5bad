"""Ablation sweeps: one knob (or a small grid of knobs) of one method, each value its own method.

A config entry ``sweeps: {name: {method: M, key: K, values: [v1, v2, …]}}`` expands at DAG time
(:func:`expand_sweeps`) into derived methods ``M__{leaf}{v}`` (``leaf`` = the last part of ``K``,
v's non-alphanumerics as "_"), each a copy of M with K set to v. K is looked up in M's own block first (``lambdas``, ``damping``,
``similarity``, …), then in the block of M's feature spec (``timesteps``, ``projection.dim``,
``noise_seeds``, …), which is copied the same way into ``{spec}__{leaf}{v}``. Everything the value
does not change is shared: a ``projection.dim`` sweep re-featurizes, but trains, measures and
generates nothing again; a value equal to M's own is M itself (no new job). A ``grid: {K1: [...],
K2: [...]}`` in place of ``key``/``values`` sweeps several knobs jointly over the product of their
lists (issue 18 item 1): a point's name lists the knobs it changes (``M__dim4096__timesteps20``), so
the points it shares with one-knob sweeps are the same methods and jobs. With ``select: true``
the sweep also adds ``{name}_selected``, a ``select`` method over its values (docs/methods.md §2.20:
the value the select pool prefers, never the lds pool), whose row ends the sweep's table. Each derived method runs
and is evaluated like any other (docs/methods.md §4.4), and :func:`sweep_table` gathers LDS against the
value, per attributed set: D-TRAK's per-timestep-count (§5.1, 10 / 100 / 1000 timesteps) and per-k
(projection dimension) ablations are two such sweeps.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from diffattr.errors import ConfigError

SWEEP_COLUMNS = ["sweep", "method", "key", "value", "set", "lds", "std", "ci_low", "ci_high", "chosen"]


def _get(block: Mapping[str, Any], key: str) -> Any:
    node: Any = block
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _with(block: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(dict(block))
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return out


def _label(value: Any) -> str:
    """A value as printed in tables: lists joined by "-", floats in %g, a grid point as
    "leaf=value, …"."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k.split('.')[-1]}={_label(v)}" for k, v in value.items())
    return "-".join(map(_label, value)) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


def _name(base: str, changed: Mapping[str, Any]) -> str:
    """A derived block name, ``{base}__{leaf}{value}`` per changed knob (``leaf``: the key's last
    part) with each value's non-alphanumerics as "_" (config names are identifiers)."""
    return base + "".join(f"__{key.split('.')[-1]}{re.sub(r'[^A-Za-z0-9]', '_', _label(v))}"
                          for key, v in changed.items())


def knobs(name: str, sweep: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    """A sweep's (key, values) pairs: its one ``key`` over ``values``, or each key of its ``grid``
    (a joint sweep over the product of the lists, issue 18 item 1), in key order."""
    has_key, has_values, grid = "key" in sweep, "values" in sweep, sweep.get("grid")
    one = has_key or has_values
    wrong = None
    if one and grid:
        wrong = "it sets both"
    elif not (one or grid):
        wrong = "it sets neither"
    elif has_key != has_values:
        wrong = f"it sets '{'key' if has_key else 'values'}' alone"
    if wrong:
        raise ConfigError(f"Config key 'sweeps.{name}' must set either 'key' with 'values' (one knob) or 'grid' "
                          f"(knob → values); {wrong}.")
    return [(sweep["key"], list(sweep["values"]))] if one else sorted((k, list(v)) for k, v in grid.items())


def sweep_key(name: str, sweep: Mapping[str, Any]) -> str:
    """The ``key`` column of a sweep's table: its knob, or a grid's knobs joined by " × "."""
    return " × ".join(k for k, _ in knobs(name, sweep))


def sweep_points(name: str, sweep: Mapping[str, Any], methods: Mapping[str, Any],
                 features: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The points of one sweep, in value order (a grid's: the product of its lists, the last key
    varying fastest): ``value`` (a grid's: a dict key → value), ``method`` (derived, or the swept
    method itself where every knob is at its own value), and the derived ``method_block`` / ``spec``
    / ``spec_block`` to add (None when nothing new is needed). A derived name lists only the knobs
    that differ from the method's own values, so a grid point that changes one knob is the same
    method as a one-knob sweep's point (the same jobs)."""
    method = sweep["method"]
    if method not in methods:
        raise ConfigError(f"Config key 'sweeps.{name}.method' names '{method}', which is not a block under methods.")
    block = methods[method]
    spec = block.get("features") if isinstance(block.get("features"), str) else None
    if spec is not None and spec not in features:  # the refusal check_inputs would give, before the sweep's
        raise ConfigError(f"Config key 'methods.{method}.features' names '{spec}', which is not a block under 'features'.")
    grid = knobs(name, sweep)
    where, base = {}, {}
    for key, _ in grid:
        try:
            base[key], where[key] = _get(block, key), "method"
        except KeyError:
            try:
                if spec is None:
                    raise KeyError(key) from None
                base[key], where[key] = _get(features[spec], key), "spec"
            except KeyError:
                field = "key" if "key" in sweep else f"grid.{key}"
                raise ConfigError(f"Config key 'sweeps.{name}.{field}' is '{key}', which neither methods.{method} "
                                  f"nor its feature spec sets.") from None
    points = []
    for values in itertools.product(*(v for _, v in grid)):
        point = dict(zip((k for k, _ in grid), values))
        changed = {k: v for k, v in point.items() if v != base[k]}
        value = point if "grid" in sweep else values[0]
        if not changed:
            points.append({"value": value, "method": method, "method_block": None, "spec": None, "spec_block": None})
            continue
        method_block, spec_name, spec_block = dict(block), None, None  # _with copies before it sets
        in_spec = {k: v for k, v in changed.items() if where[k] == "spec"}
        for key, v in changed.items():
            if where[key] == "method":
                method_block = _with(method_block, key, v)
        if in_spec:
            spec_name, spec_block = _name(spec, in_spec), features[spec]
            for key, v in in_spec.items():
                spec_block = _with(spec_block, key, v)
            method_block = {**copy.deepcopy(method_block), "features": spec_name}
        points.append({"value": value, "method": _name(method, changed), "method_block": method_block,
                       "spec": spec_name, "spec_block": spec_block})
    return points


def expand_sweeps(config: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Add every sweep's derived methods and feature specs to ``config["methods"]`` and
    ``config["features"]`` (in place) and, when ``evaluation.methods`` lists the swept method, to
    that list too; returns each sweep's points (:func:`sweep_points`). A sweep set to null is
    skipped (how a layered config drops one it inherits); a derived name that is already a config
    block is refused."""
    plans = {}
    for name, sweep in (config.get("sweeps") or {}).items():
        if sweep is None:  # a layered config drops an inherited sweep by setting it to null
            continue
        points = sweep_points(name, sweep, config["methods"], config.get("features", {}))
        for p in points:
            for table, entry, block in (("methods", p["method"], p["method_block"]), ("features", p["spec"], p["spec_block"])):
                if block is None:
                    continue
                if entry in config[table] and config[table][entry] != block:
                    raise ConfigError(f"Config key 'sweeps.{name}' derives '{entry}', which {table} already defines "
                                      f"differently; rename that block.")
                config[table][entry] = block
        evaluated = config.get("evaluation", {}).get("methods")
        if sweep.get("select"):
            selected = selected_name(name)
            block = {"kind": "select", "methods": selection_candidates(sweep["method"], points)}
            if len(block["methods"]) < 2:
                raise ConfigError(f"Config key 'sweeps.{name}.select' is true, but the sweep has one value only; "
                                  f"a choice needs at least 2.")
            if selected in config["methods"] and config["methods"][selected] != block:
                raise ConfigError(f"Config key 'sweeps.{name}.select' derives '{selected}', which methods already "
                                  f"defines differently; rename that block.")
            config["methods"][selected] = block
        if evaluated and sweep["method"] in evaluated:
            extra = [p["method"] for p in points] + ([selected_name(name)] if sweep.get("select") else [])
            evaluated.extend(m for m in extra if m not in evaluated)
        plans[name] = points
    return plans


SELECTED_VALUE = "chosen on select"
"""The ``value`` of a ``select: true`` sweep's row of its selected method (:func:`sweep_rows`)."""


def selected_name(sweep: str) -> str:
    """The select method a ``select: true`` sweep adds (docs/methods.md §2.20): ``{sweep}_selected``."""
    return f"{sweep}_selected"


def selection_candidates(method: str, points: list[dict[str, Any]]) -> list[str]:
    """A selecting sweep's candidates, simplest first: the swept method's own value (what the config
    chose by hand, so one_se keeps it unless another value is clearly better), then the values in order."""
    derived = [p["method"] for p in points]
    return [method, *(m for m in derived if m != method)] if method in derived else derived


def sweep_rows(name: str, sweep: Mapping[str, Any], points: list[dict[str, Any]]) -> list[tuple[Any, str]]:
    """The (value, method) rows of a sweep's table: each point, and for ``select: true`` the selected
    method's row (value :data:`SELECTED_VALUE`; its ``chosen`` says which value won)."""
    rows = [(p["value"], p["method"]) for p in points]
    return rows + [(SELECTED_VALUE, selected_name(name))] if sweep.get("select") else rows


def sweep_table(name: str, key: str, points: Iterable[tuple[Any, str]], lds_tables: Iterable[str]) -> pd.DataFrame:
    """One sweep's ablation table: for each (value, method) point, its rows of the per-method LDS
    tables (``eval/lds/{method}.csv``, given in the same order): LDS, std, CI and the chosen
    hyper-parameter per attributed set."""
    rows = []
    for (value, method), path in zip(points, lds_tables):
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
        for r in table.to_dict("records"):
            rows.append({"sweep": name, "method": method, "key": key, "value": _label(value), "set": r["set"],
                         "lds": r["lds"], "std": r.get("std"), "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"),
                         "chosen": r.get("chosen", "")})
    table = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    if key.split(".")[-1] == "seed" and len(table):
        points_only = table[table["value"] != SELECTED_VALUE]
        table = pd.concat([table, seed_spread(points_only)], ignore_index=True)
    return table


SPREAD_VALUE = "mean ± std over seeds"
"""The ``value`` of a seed sweep's summary rows (:func:`seed_spread`)."""


def seed_spread(table: pd.DataFrame) -> pd.DataFrame:
    """A seed sweep's spread (issue 18, item 5: e.g. ``projection.seed``): per attributed set, the
    mean LDS over the seeds with ``std`` the standard deviation across seeds (ddof = 1) and the CI
    columns mean ± that std, so the ± of this row is the seeds' spread, while each seed's own row
    keeps its bootstrap-over-subsets ± (``chosen`` says which is which)."""
    rows = []
    for split, g in table.groupby("set", sort=False):
        lds = g["lds"].astype(float)
        mean, std = float(lds.mean()), float(lds.std(ddof=1)) if len(lds) > 1 else float("nan")
        boot = float(g["std"].astype(float).mean())
        rows.append({"sweep": g["sweep"].iloc[0], "method": g["method"].iloc[0].split("__")[0], "key": g["key"].iloc[0],
                     "value": SPREAD_VALUE, "set": split, "lds": mean, "std": std, "ci_low": mean - std,
                     "ci_high": mean + std, "chosen": f"± = std over {len(lds)} seeds (each seed's row: bootstrap "
                                                     f"over subsets, mean {boot:.3f})"})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)
