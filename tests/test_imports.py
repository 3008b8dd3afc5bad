"""The package's import graph: no cycles (issue 15), and the DAG-time modules stay torch-free.

The graph is built from the source with :mod:`ast`, counting imports at any depth (the package
imports lazily inside functions, and a cycle there is still a cycle: whichever module is first
imported at run time decides which half-initialised module the other one sees). An edge a → b
means module a names module b in an import; ``from diffattr.x import y`` is an edge to
``diffattr.x.y`` when that is a module, else to ``diffattr.x``."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = "diffattr"


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module under ``root/package``, by dotted name (a package's ``__init__.py`` is the package)."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imported_modules(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``module``'s source imports anywhere in its tree: ``import
    a.b`` gives ``a.b``; ``from a import b`` gives ``a.b`` when that is a module, else ``a``; relative
    imports are resolved against ``module`` (against itself when ``is_package``). A dotted name that
    is not one of ``modules`` counts as its longest prefix that is; other packages give nothing."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                names.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    found = {resolve(name, modules) for name in names}
    return {m for m in found if m is not None}


def resolve(name: str, modules: set[str]) -> str | None:
    """``name`` if it is one of ``modules``, else its longest dotted prefix that is; ``None`` when
    no prefix is (another package)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """module → the package's modules it imports, self-edges dropped. An edge goes to the module
    named, not to the packages above it that Python initialises first (every submodule would
    otherwise import its own package and close a cycle with any ``__init__`` that re-exports it)."""
    files = module_files(root)
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = imported_modules(tree, module, path.name == "__init__.py", modules) - {module}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` with more than one node (the cycles),
    each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One closed path a → … → a inside ``component`` (breadth-first from its first node back to it)."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{component} is not strongly connected")


# --- the checker itself, on graphs whose answer is known by hand -------------------------------


def test_tarjan_finds_exactly_the_cycles_of_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert strongly_connected(graph) == [["a", "b", "c"], ["d", "e"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_builder_sees_lazy_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from diffattr.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "sub" / "b.py").write_text("import numpy\nthing = 1\ndef g():\n    from ..a import f\n")
    (pkg / "sub" / "c.py").write_text("from diffattr.sub import thing\nfrom . import b\n")
    graph = import_graph(tmp_path)
    assert graph == {
        PACKAGE: set(),
        f"{PACKAGE}.a": {f"{PACKAGE}.sub.b"},  # `from diffattr.sub import b`: b is a module
        f"{PACKAGE}.sub": {f"{PACKAGE}.sub.b"},
        f"{PACKAGE}.sub.b": {f"{PACKAGE}.a"},  # lazy, relative, two levels up
        f"{PACKAGE}.sub.c": {f"{PACKAGE}.sub", f"{PACKAGE}.sub.b"},
    }
    assert strongly_connected(graph) == [[f"{PACKAGE}.a", f"{PACKAGE}.sub.b"]]


# --- the package ---------------------------------------------------------------------------------


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30, sorted(graph)  # the walk found the package, not an empty folder
    cycles = [f"{{{', '.join(c)}}}, e.g. {' → '.join(a_cycle(graph, c))}" for c in strongly_connected(graph)]
    assert not cycles, "import cycles (counting imports inside functions):\n" + "\n".join(cycles)


DAG_TIME = ["diffattr.config", "diffattr.data.sizes", "diffattr.sweeps", "diffattr.show"]
"""Modules the workflow imports while building its DAG, besides those the rule files name."""
HEAVY = ["torch", "diffusers", "peft", "kronfluence"]


def workflow_imports(root: Path = REPO) -> list[str]:
    """Our modules that the Snakefile and ``rules/*.smk`` import (``from diffattr.x import`` or
    ``import diffattr.x`` at any indentation): all of them run in the Snakemake process."""
    pattern = re.compile(r"^\s*(?:from|import)\s+(diffattr(?:\.\w+)*)", re.MULTILINE)
    texts = [(root / "Snakefile").read_text(), *(p.read_text() for p in sorted((root / "rules").glob("*.smk")))]
    return sorted({m for text in texts for m in pattern.findall(text)})


def test_dag_time_modules_import_without_torch():
    wanted = sorted(set(DAG_TIME) | set(workflow_imports()))
    assert "diffattr.config" in workflow_imports() and "diffattr.workflow.layout" in workflow_imports(), wanted
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in wanted)
        + f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], f"imported at DAG time by one of {wanted}"


def test_moved_names_are_the_same_objects_at_their_old_homes():
    """Breaking the cycles moved three facts; every old import path still names the one object."""
    import diffattr.config
    import diffattr.counterfactual
    import diffattr.data
    import diffattr.data.imageset
    import diffattr.errors
    import diffattr.scores
    import diffattr.show

    assert diffattr.config.ConfigError is diffattr.errors.ConfigError
    assert diffattr.data.ImageSet is diffattr.data.imageset.ImageSet
    assert diffattr.show.responsibility is diffattr.scores.responsibility
    assert diffattr.counterfactual.responsibility is diffattr.scores.responsibility


def test_responsibility_is_minus_sign_times_score_and_refuses_other_signs():
    import numpy as np
    import pytest

    from diffattr.counterfactual import removal_set
    from diffattr.scores import ScoreSignError, responsibility
    from diffattr.show import ShowError, rank_training

    tau = np.array([0.5, -2.0, 3.0, 0.0])
    assert responsibility(tau, -1).tolist() == [0.5, -2.0, 3.0, 0.0]  # HELPS: a larger τ helps more
    assert responsibility(tau, 1).tolist() == [-0.5, 2.0, -3.0, -0.0]  # LOSS_UNITS: τ is the loss change
    sentence = "The score sign must be -1 or +1, got 0."
    with pytest.raises(ScoreSignError, match=re.escape(sentence)):
        responsibility(tau, 0)
    with pytest.raises(ShowError, match=re.escape(sentence)):  # the CLI's error type, same sentence
        rank_training(tau, 0, 2)
    with pytest.raises(ValueError, match=re.escape(sentence)):
        removal_set(tau, 0, 2)
