"""Each rule's conda env (envs/*.yaml, used under ``--sdm conda``) declares every third-party module its
workflow script reaches, and installs diffattr itself (issue 15, item 6).

Why a test and not a run: a Python ``script:`` job starts with Snakemake's preamble, which appends the
*submitting* process's whole ``sys.path`` to the job's (``sys.path.extend(get_snakemake_searchpaths())``,
snakemake/script/__init__.py). A module missing from the env is then imported from the venv that launched
Snakemake, so the job works on the machine that has that venv and fails on a node that has only the env.
Only reading the code shows the gap, so this test reads it, without importing anything (torch never loads):

1. ``rules/*.smk`` text gives rule → (``conda:`` env, ``script:`` path);
2. the script's imports are followed through the ``diffattr`` package with :mod:`ast`: module-level and
   function-level imports (the scripts import lazily), relative imports, and the ``"diffattr.x:name"``
   strings that ``importlib.import_module`` loads (the method registry); an import under
   ``if TYPE_CHECKING:`` never runs and is skipped. Importing ``a.b.c`` runs ``a/__init__`` and
   ``a/b/__init__`` too, so those are followed as well;
3. each third-party top-level module maps to its distribution (``packages_distributions()`` of the test
   environment, conda-forge names from ``CONDA_NAME``), which must be declared in the env file, among its
   conda ``dependencies`` or its ``pip:`` section.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "diffattr"

CONDA_NAME = {"torch": "pytorch"}
"""Distribution (PyPI name, normalised) → its conda-forge package name, where the two differ."""

DIRECTIVE = re.compile(r"^(\s*)(rule|checkpoint)\s+(\w+)\s*:")
KEY = re.compile(r"^\s*(\w+)\s*:\s*(.*?)\s*$")
STRING = re.compile(r"""^(?:f|r)?(["'])(.*)\1,?$""")


def normalise(name: str) -> str:
    """A distribution name in PEP 503 normal form: lower case, runs of ``-``, ``_``, ``.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    """The package name of a conda or pip requirement (``conda-forge::numpy>=1.26`` → ``numpy``)."""
    spec = spec.split("::")[-1].strip()
    return normalise(re.split(r"[\s<>=!~;\[@]", spec, maxsplit=1)[0])


def rule_directives(smk_text: str) -> dict[str, dict[str, str]]:
    """Rule name → {directive: its single string value} for the ``conda`` and ``script`` directives of
    every rule (or checkpoint) in one .smk file's text. A value is the string on the directive's line or
    on the next non-blank line; rules may sit indented under an ``if``."""
    rules: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    indent = -1
    pending: str | None = None
    for line in smk_text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        width = len(line) - len(line.lstrip())
        if match := DIRECTIVE.match(line):
            indent, current, pending = len(match.group(1)), {}, None
            rules[match.group(3)] = current
            continue
        if current is None:
            continue
        if width <= indent:
            current, pending = None, None
            continue
        if pending is not None:
            if value := STRING.match(line.strip()):
                current[pending] = value.group(2)
            pending = None
            continue
        if (match := KEY.match(line)) and match.group(1) in ("conda", "script"):
            if value := STRING.match(match.group(2)):
                current[match.group(1)] = value.group(2)
            elif not match.group(2):
                pending = match.group(1)
    return rules


def workflow_rules(repo: Path = REPO) -> dict[str, dict[str, Path]]:
    """Rule name → {"conda": env file, "script": workflow script} (absolute paths, resolved against the
    rule file's folder as Snakemake does) for every rule in ``rules/*.smk`` that runs a script."""
    found: dict[str, dict[str, Path]] = {}
    for smk in sorted((repo / "rules").glob("*.smk")):
        for rule, directives in rule_directives(smk.read_text()).items():
            if "script" in directives:
                found[rule] = {k: (smk.parent / v).resolve() for k, v in directives.items()}
    return found


def is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` test is ``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (its body never runs)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def executed_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree``, function bodies included, except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(tree: ast.AST, module: str, is_package: bool, package: str = PACKAGE) -> set[str]:
    """Absolute dotted names that a module's code may import, anywhere it runs: ``import a.b`` gives
    ``a.b``; ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a submodule); a relative import is
    resolved against ``module`` (its own package if ``is_package``); a string ``"<package>.x:name"`` or
    ``"<package>.x"`` (what the registry hands to ``importlib.import_module``) gives ``<package>.x``."""
    names: set[str] = set()
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in executed_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(rf"{package}(\.\w+)+(:\w+)?", node.value):
                names.add(node.value.split(":")[0])
    return names


def package_file(name: str, root: Path) -> Path | None:
    """The source file that importing dotted ``name`` runs, under ``root`` (the folder holding the
    package): ``a/b.py`` or ``a/b/__init__.py``; None where ``name`` is not a module there."""
    path = root.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def third_party_modules(script: Path, root: Path = REPO, package: str = PACKAGE) -> dict[str, list[str]]:
    """Top-level third-party module → the import chain (script, package modules...) that first reaches
    it, over everything ``script`` imports directly or through ``package`` (found under ``root``).
    Standard-library modules and ``package`` itself are not third-party."""
    chains: dict[str, list[str]] = {}
    queue: list[tuple[set[str], list[str]]] = [
        (imported_names(ast.parse(script.read_text()), "__main__", False, package), [script.name])]
    seen: set[str] = set()
    while queue:
        names, chain = queue.pop(0)
        for name in sorted(names):
            top = name.split(".")[0]
            if top == package:
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):
                    module = ".".join(parts[:depth])
                    source = package_file(module, root)
                    if module in seen or source is None:
                        continue
                    seen.add(module)
                    tree = ast.parse(source.read_text())
                    queue.append((imported_names(tree, module, source.name == "__init__.py", package),
                                  [*chain, module]))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                chains.setdefault(top, chain)
    return chains


def distributions(module: str) -> set[str]:
    """The conda-forge names of the distributions that provide top-level ``module`` in the test
    environment (e.g. ``sklearn`` → ``scikit-learn``, ``yaml`` → ``pyyaml``, ``torch`` → ``pytorch``);
    empty where no installed distribution provides it."""
    return {CONDA_NAME.get(normalise(d), normalise(d)) for d in packages_distributions().get(module, [])}


@dataclass(frozen=True)
class EnvFile:
    """What one conda env file declares: its conda dependency specs and its ``pip:`` section."""

    path: Path
    conda: tuple[str, ...]
    pip: tuple[str, ...]

    @classmethod
    def read(cls, path: Path) -> EnvFile:
        """Parse an env file's ``dependencies`` into conda specs and ``pip:`` entries."""
        conda: list[str] = []
        pip: list[str] = []
        for dep in yaml.safe_load(path.read_text())["dependencies"]:
            if isinstance(dep, dict):
                pip.extend(dep.get("pip", []))
            else:
                conda.append(dep)
        return cls(path, tuple(conda), tuple(pip))

    def declared(self) -> set[str]:
        """Normalised names of every package the env installs (pip options such as ``-e`` excluded)."""
        return {requirement_name(s) for s in (*self.conda, *self.pip) if not s.startswith("-")}

    def post_deploy(self) -> Path:
        """The post-deployment script Snakemake runs after creating this env (``<env>.post-deploy.sh``)."""
        return self.path.with_name(f"{self.path.stem}.post-deploy.sh")


RULES = workflow_rules()


def test_every_rule_with_a_script_has_an_env_file():
    """Each rule that runs a script names an existing env file under envs/ (and the parser found them:
    one per ``script:`` line in rules/*.smk)."""
    scripts = sum(len(re.findall(r"^\s*script\s*:", smk.read_text(), re.M))
                  for smk in (REPO / "rules").glob("*.smk"))
    assert len(RULES) == scripts
    for rule, paths in RULES.items():
        assert "conda" in paths, f"rule {rule} runs {paths['script'].name} but names no conda: env"
        assert paths["conda"].parent == REPO / "envs" and paths["conda"].is_file(), (rule, paths["conda"])
        assert paths["script"].is_file(), (rule, paths["script"])


@pytest.mark.parametrize("rule", sorted(RULES))
def test_env_declares_every_module_the_script_reaches(rule):
    """Every third-party module the rule's script reaches is installed by the rule's env file."""
    env = EnvFile.read(RULES[rule]["conda"])
    declared = env.declared()
    missing = []
    for module, chain in sorted(third_party_modules(RULES[rule]["script"]).items()):
        dists = distributions(module)
        assert dists, f"module {module} (via {' -> '.join(chain)}) is not installed here: no distribution known"
        if not dists & declared:
            missing.append(f"{'/'.join(sorted(dists))} (module {module}, via {' -> '.join(chain)})")
    assert not missing, f"rule {rule}: envs/{env.path.name} does not declare " + "; ".join(missing)


@pytest.mark.parametrize("env_path", sorted({p["conda"] for p in RULES.values()}), ids=lambda p: p.name)
def test_env_installs_diffattr_from_the_repository(env_path):
    """The env's post-deploy script pip-installs this repository (editable, ``--no-deps``: the env file
    already holds the dependencies, and pip must not pull torch into a torch-free env), from Snakemake's
    working directory, which is the repository root, and after checking that it is."""
    env = EnvFile.read(env_path)
    script = env.post_deploy()
    assert script.is_file(), f"envs/{env_path.name} has no {script.name} to install {PACKAGE}"
    installs = [shlex.split(line) for line in script.read_text().splitlines() if " pip install " in line]
    assert len(installs) == 1, installs
    argv = installs[0]
    assert "--no-deps" in argv and "--no-build-isolation" in argv, argv
    assert argv[argv.index("-e") + 1] == ".", argv
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"] == PACKAGE
    assert 'name = "diffattr"' in script.read_text(), "the script does not check it runs in the repository root"
    # --no-build-isolation builds with the env's own setuptools (pyproject's build-system requires it).
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    assert {requirement_name(r) for r in build} <= env.declared(), (env_path.name, build)
    assert "pip" in env.declared()


def pyproject_specs() -> dict[str, str]:
    """conda-forge name → version spec of each of pyproject.toml's dependencies (``torch>=2.1`` →
    ``pytorch``: ``>=2.1``)."""
    specs = {}
    for req in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = requirement_name(req)
        specs[CONDA_NAME.get(name, name)] = req[len(re.split(r"[\s<>=!~;\[@]", req, maxsplit=1)[0]):].strip()
    return specs


@pytest.mark.parametrize("env_path", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_versions_match_pyproject(env_path):
    """A package that both pyproject.toml and an env file declare carries the same version spec in both."""
    specs = pyproject_specs()
    env = EnvFile.read(env_path)
    for spec in (*env.conda, *env.pip):
        name = requirement_name(spec)
        if name in specs and not spec.startswith("-"):
            written = spec.split("::")[-1][len(re.split(r"[\s<>=!~;\[@]", spec.split("::")[-1], maxsplit=1)[0]):]
            assert written.strip() == specs[name], f"envs/{env_path.name}: {spec} but pyproject.toml has {specs[name]}"


# The walker itself, on a package written here, against what each file plainly imports.

FAKE = {
    "pkg/__init__.py": "import json\n",
    "pkg/a.py": "def f():\n    from .b import g\n    return g\n",
    "pkg/b.py": "import os\n\ndef g():\n    import numpy as np\n    return np\n",
    "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\nelse:\n    import scipy\n",
    "pkg/sub/__init__.py": "from ..c import x\n",
    "pkg/sub/d.py": "from . import e\nimport yaml.constructor\n",
    "pkg/sub/e.py": "from PIL import Image\n",
    "pkg/registry.py": "SCORERS = {'one': 'pkg.sub.d:run'}\n",
    "pkg/unused.py": "import pandas\n",
}


@pytest.fixture
def fake_package(tmp_path):
    for name, text in FAKE.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_walker_follows_lazy_relative_and_registry_imports(fake_package):
    script = fake_package / "job.py"
    script.write_text("import pkg.a\nfrom pkg import registry\n")
    found = third_party_modules(script, fake_package, "pkg")
    # pkg.a → (function body) pkg.b → numpy; pkg.registry → "pkg.sub.d:run" → pkg.sub (→ pkg.c → scipy,
    # not torch) and pkg.sub.d → yaml, pkg.sub.e → PIL; json and os are stdlib; pkg.unused is never imported.
    assert set(found) == {"numpy", "scipy", "yaml", "PIL"}
    assert found["numpy"] == ["job.py", "pkg.a", "pkg.b"]
    assert found["PIL"] == ["job.py", "pkg.registry", "pkg.sub.d", "pkg.sub.e"]


def test_rule_directives_reads_nested_and_inline_values():
    text = (
        "X = 1\n\nif X:\n\n    rule one:\n        conda:\n            \"../envs/a.yaml\"\n"
        "        script:\n            \"../s/one.py\"\n\n\nrule two:\n    conda: '../envs/b.yaml'\n"
        "    params:\n        conda=1,\n    script:\n        \"../s/two.py\"\n\n\nrule three:\n    shell:\n        \"true\"\n"
    )
    assert rule_directives(text) == {
        "one": {"conda": "../envs/a.yaml", "script": "../s/one.py"},
        "two": {"conda": "../envs/b.yaml", "script": "../s/two.py"},
        "three": {},
    }


def test_missing_declaration_is_reported_with_rule_env_and_module(tmp_path):
    """A copy of envs/eval.yaml without numpy fails the check for a rule that reaches numpy, naming all three."""
    rule = "lds_table"
    env_path = tmp_path / "eval.yaml"
    text = RULES[rule]["conda"].read_text()
    env_path.write_text(re.sub(r"^\s*- numpy.*\n", "", text, flags=re.M))
    declared = EnvFile.read(env_path).declared()
    assert "numpy" in EnvFile.read(RULES[rule]["conda"]).declared() and "numpy" not in declared
    reached = third_party_modules(RULES[rule]["script"])
    assert "numpy" in reached and distributions("numpy") == {"numpy"}
    assert not distributions("numpy") & declared
