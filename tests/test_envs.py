"""Each rule's conda env (envs/*.yaml, used under ``--sdm conda``) declares every third-party module its
workflow script reaches, and installs diffattr itself (issue 15, item 6).

Why a test and not a run: a Python ``script:`` job starts with Snakemake's preamble, which appends the
*submitting* process's whole ``sys.path`` to the job's (``sys.path.extend(get_snakemake_searchpaths())``,
snakemake/script/__init__.py). A module missing from the env is then imported from the venv that launched
Snakemake, so the job works on the machine that has that venv and fails on a node that has only the env.
Only reading the code shows the gap, so this test reads it and imports nothing of it (torch never loads):

1. ``rules/*.smk`` text gives rule → (``conda:`` env, ``script:`` path);
2. the script's imports are followed through the ``diffattr`` package with :mod:`ast`
   (:func:`third_party_modules`): module-level imports, imports inside the functions that reached code
   uses (the scripts import lazily), relative imports, and the ``"diffattr.x:name"`` strings that the
   method registry hands to ``importlib.import_module``; an import under ``if TYPE_CHECKING:`` never
   runs and is skipped;
3. each third-party top-level module maps to its distribution (``packages_distributions()`` of the test
   environment, conda-forge names from ``CONDA_NAME``), which the env file must declare among its conda
   ``dependencies`` or in its ``pip:`` section.
"""

from __future__ import annotations

import ast
import functools
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "diffattr"

CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
"""Distribution (PyPI name, normalised) → the conda-forge package the envs install for it, where the two
differ (``matplotlib-base``: matplotlib without the Qt GUI backends, which no job uses)."""

RULE = re.compile(r"^(\s*)(?:rule|checkpoint)\s+(\w+)\s*:")
KEY = re.compile(r"^\s*(\w+)\s*:\s*(.*?)\s*$")
STRING = re.compile(r"""^[fr]?(["'])(.*)\1,?$""")
NAME_END = re.compile(r"[\s<>=!~;\[@]")


def normalise(name: str) -> str:
    """A distribution name in PEP 503 normal form: lower case, runs of ``-``, ``_``, ``.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_requirement(spec: str) -> tuple[str, str]:
    """A conda or pip requirement as (normalised name, version spec): ``conda-forge::numpy>=1.26`` →
    (``numpy``, ``>=1.26``)."""
    spec = spec.split("::")[-1].strip()
    name = NAME_END.split(spec, maxsplit=1)[0]
    return normalise(name), spec[len(name):].strip()


def rule_directives(smk_text: str) -> dict[str, dict[str, str]]:
    """Rule name → {directive: its string value} for the ``conda`` and ``script`` directives of every
    rule (or checkpoint) in one .smk file's text. A value is the string on the directive's own line or
    on the next non-blank line; a rule may sit indented under an ``if``; it ends at the first line that
    is not indented deeper than its ``rule`` line."""
    rules: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    indent, pending = -1, None
    for line in smk_text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := RULE.match(line):
            indent, current, pending = len(match.group(1)), {}, None
            rules[match.group(2)] = current
        elif current is None:
            continue
        elif len(line) - len(line.lstrip()) <= indent:
            current, pending = None, None
        elif pending is not None:
            if value := STRING.match(line.strip()):
                current[pending] = value.group(2)
            pending = None
        elif (match := KEY.match(line)) and match.group(1) in ("conda", "script"):
            if value := STRING.match(match.group(2)):
                current[match.group(1)] = value.group(2)
            elif not match.group(2):
                pending = match.group(1)
    return rules


def workflow_rules(repo: Path = REPO) -> dict[str, dict[str, Path]]:
    """Rule name → {"conda": env file, "script": workflow script} for every rule in ``rules/*.smk`` that
    runs a script, paths resolved against the rule file's folder as Snakemake does."""
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


@dataclass
class Region:
    """Code that runs as one piece: a module's top level (``key`` None: runs on import; class bodies,
    decorators and defaults included) or one function body (``key``: the name whose use runs it, the
    function's own name, or for a method its class's name). ``imports``: absolute dotted names it may
    import; ``names``: identifiers it uses (names, attributes, imported names); ``dynamic``: the
    ``"<package>.x:name"`` strings it holds; ``loads_dynamic``: it calls ``import_module``."""

    label: str
    key: str | None
    imports: set[str]
    names: set[str]
    dynamic: set[str]
    loads_dynamic: bool = False


def regions(tree: ast.Module, module: str, is_package: bool, package: str = PACKAGE) -> list[Region]:
    """Split a module's syntax tree into its :class:`Region` s. A relative import is resolved against
    ``module`` (its own package if ``is_package``); ``from a import b`` imports ``a`` and maybe the
    submodule ``a.b``; a body under ``if TYPE_CHECKING:`` never runs and is left out."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    top = Region(module, None, set(), set(), set())
    found = [top]

    def visit(node: ast.AST, region: Region, owner: str | None) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child, region, None)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in (*node.decorator_list, node.args, *([node.returns] if node.returns else [])):
                visit(child, region, None)
            body = Region(f"{module}:{node.name}", owner or node.name, set(), set(), set())
            found.append(body)
            for child in node.body:
                visit(child, body, None)
            return
        if isinstance(node, ast.ClassDef):
            for child in ast.iter_child_nodes(node):
                visit(child, region, node.name if child in node.body else None)
            return
        if isinstance(node, ast.Import):
            region.imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            region.imports.add(source)
            region.imports.update(f"{source}.{a.name}" for a in node.names if a.name != "*")
            region.names.update(a.name for a in node.names)
        elif isinstance(node, ast.Name):
            region.names.add(node.id)
        elif isinstance(node, ast.Attribute):
            region.names.add(node.attr)
            region.loads_dynamic |= node.attr == "import_module"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(rf"{package}(\.\w+)+(:\w+)?", node.value):
                region.dynamic.add(node.value)
        for child in ast.iter_child_nodes(node):
            visit(child, region, None)

    for node in tree.body:
        visit(node, top, None)
    return found


@functools.lru_cache(maxsize=None)
def module_regions(source: Path, module: str, package: str) -> tuple[Region, ...]:
    """The regions of one package module's source file (parsed once per test session)."""
    return tuple(regions(ast.parse(source.read_text()), module, source.name == "__init__.py", package))


def package_file(name: str, root: Path) -> Path | None:
    """The source file that importing dotted ``name`` runs, under ``root`` (the folder holding the
    package): ``a/b.py`` or ``a/b/__init__.py``; None where ``name`` is not a module there."""
    path = root.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def third_party_modules(script: Path, root: Path = REPO, package: str = PACKAGE) -> dict[str, list[str]]:
    """Top-level third-party module → the chain of regions (the script, then ``module`` or
    ``module:function``) through which ``script`` reaches it, following ``package`` (found under ``root``).

    Reached, to a fixed point: the script's whole code; the top level of every package module that
    reached code imports, with its parent packages (an import runs them first); a function body of a
    reached module once its key (its name, or its class's) is used by reached code anywhere, so a lazy
    import counts where the function may run and not where no job calls it; a ``"module:name"`` string
    in reached code once reached code calls ``import_module``. Matching is by name alone, so it errs
    towards declaring more. Standard-library modules and ``package`` itself are not third-party."""
    script_regions = regions(ast.parse(script.read_text()), "__main__", False, package)
    active = [(Region(script.name, None, r.imports, r.names, r.dynamic, r.loads_dynamic), [])
              for r in script_regions]
    waiting: list[tuple[Region, list[str]]] = []
    loaded: set[str] = set()
    used: set[str] = set()
    dynamic: dict[str, list[str]] = {}
    loads_dynamic = False
    chains: dict[str, list[str]] = {}

    def reach(name: str, chain: list[str]) -> None:
        parts = name.split(".")
        if parts[0] != package:
            if parts[0] and parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                chains.setdefault(parts[0], chain)
            return
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            source = package_file(module, root)
            if module in loaded or source is None:
                continue
            loaded.add(module)
            for region in module_regions(source, module, package):
                (active if region.key is None else waiting).append((region, chain))

    while active:
        while active:
            region, chain = active.pop(0)
            chain = [*chain, region.label]
            used |= region.names
            loads_dynamic |= region.loads_dynamic
            for text in region.dynamic:
                dynamic.setdefault(text, chain)
            for name in sorted(region.imports):
                reach(name, chain)
        if loads_dynamic:
            for text, chain in sorted(dynamic.items()):
                module, _, attr = text.partition(":")
                used.add(attr)
                reach(module, chain)
            dynamic.clear()
        active.extend((r, c) for r, c in waiting if r.key in used)
        waiting = [(r, c) for r, c in waiting if r.key not in used]
    return chains


@functools.lru_cache(maxsize=1)
def installed_distributions() -> dict[str, list[str]]:
    """Top-level module → the installed distributions that provide it (scanned once)."""
    return packages_distributions()


def distributions(module: str) -> set[str]:
    """The conda-forge names of the distributions that provide top-level ``module`` in the test
    environment (``sklearn`` → ``scikit-learn``, ``yaml`` → ``pyyaml``, ``torch`` → ``pytorch``);
    empty where no installed distribution provides it."""
    names = {normalise(d) for d in installed_distributions().get(module, [])}
    return {CONDA_NAME.get(name, name) for name in names}


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

    def requirements(self) -> dict[str, str]:
        """Normalised name → version spec of every package the env installs (pip options excluded)."""
        return dict(split_requirement(s) for s in (*self.conda, *self.pip) if not s.startswith("-"))

    def post_deploy(self) -> Path:
        """The post-deployment script Snakemake runs after creating this env (``<env>.post-deploy.sh``)."""
        return self.path.with_name(f"{self.path.stem}.post-deploy.sh")


def undeclared(rule: str, script: Path, env_path: Path) -> list[str]:
    """One sentence per third-party module that ``script`` reaches and the env file at ``env_path``
    does not install, naming the rule, the env file, the distribution, the module and how it is reached."""
    declared = EnvFile.read(env_path).requirements()
    problems = []
    for module, chain in sorted(third_party_modules(script).items()):
        dists = distributions(module)
        if not dists:
            problems.append(f"rule {rule}: module {module} (via {' -> '.join(chain)}) is not installed "
                            "in the test environment, so its distribution is unknown")
        elif not dists & declared.keys():
            problems.append(f"rule {rule}: {env_path.parent.name}/{env_path.name} does not declare "
                            f"{' or '.join(sorted(dists))}, needed for module {module} "
                            f"(via {' -> '.join(chain)})")
    return problems


RULES = workflow_rules()
ENVS = sorted({paths["conda"] for paths in RULES.values() if "conda" in paths})


def test_every_rule_with_a_script_names_an_env_file():
    """Each rule that runs a script names an existing env file under envs/, and the parser found every
    rule: one per ``script:`` line in rules/*.smk."""
    scripts = sum(len(re.findall(r"^\s*script\s*:", smk.read_text(), re.M))
                  for smk in (REPO / "rules").glob("*.smk"))
    assert len(RULES) == scripts > 0
    for rule, paths in RULES.items():
        assert "conda" in paths, f"rule {rule} runs {paths['script'].name} but names no conda: env"
        assert paths["conda"].parent == REPO / "envs" and paths["conda"].is_file(), (rule, paths["conda"])
        assert paths["script"].is_file(), (rule, paths["script"])


@pytest.mark.parametrize("rule", sorted(RULES))
def test_env_declares_every_module_the_script_reaches(rule):
    """Every third-party module the rule's script reaches is installed by the rule's env file."""
    problems = undeclared(rule, RULES[rule]["script"], RULES[rule]["conda"])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("env_path", ENVS, ids=lambda p: p.name)
def test_env_installs_diffattr_from_the_repository(env_path):
    """The env's post-deploy script checks that it runs in this repository's root (Snakemake's working
    directory) and pip-installs it there: editable, ``--no-deps`` (the env file holds the dependencies;
    pip must not pull torch into a torch-free env) and ``--no-build-isolation`` (nothing fetched for the
    build: the env declares the build backend pyproject.toml requires, and pip)."""
    env = EnvFile.read(env_path)
    script = env.post_deploy()
    assert script.is_file(), f"envs/{env_path.name} has no {script.name} to install {PACKAGE}"
    text = script.read_text()
    installs = [shlex.split(line) for line in text.splitlines() if " pip install " in line]
    assert len(installs) == 1, installs
    argv = installs[0]
    assert "--no-deps" in argv and "--no-build-isolation" in argv, argv
    assert argv[argv.index("-e") + 1] == ".", argv
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == PACKAGE
    assert f"^name = \"{PACKAGE}\"$' pyproject.toml" in text, "the script does not check it runs in the repository"
    build = dict(split_requirement(r) for r in pyproject["build-system"]["requires"])
    declared = env.requirements()
    assert all(declared.get(name) == spec for name, spec in build.items()), (env_path.name, build, declared)
    assert "pip" in declared


def test_post_deploy_scripts_are_one_script():
    """The envs install diffattr the same way: their post-deploy scripts are byte-identical."""
    texts = {EnvFile.read(p).post_deploy().read_bytes() for p in ENVS}
    assert len(ENVS) >= 2 and len(texts) == 1


def pyproject_specs() -> dict[str, str]:
    """conda-forge name → version spec of each of pyproject.toml's dependencies (``torch>=2.1`` →
    ``pytorch``: ``>=2.1``)."""
    specs = {}
    for req in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, spec = split_requirement(req)
        specs[CONDA_NAME.get(name, name)] = spec
    return specs


@pytest.mark.parametrize("env_path", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_versions_match_pyproject(env_path):
    """A package that both pyproject.toml and an env file declare carries the same version spec in both."""
    specs = pyproject_specs()
    for name, spec in EnvFile.read(env_path).requirements().items():
        if name in specs:
            assert spec == specs[name], f"envs/{env_path.name}: {name}{spec} but pyproject.toml has {specs[name]}"


def test_missing_declaration_fails_naming_rule_env_and_module(tmp_path):
    """A copy of envs/eval.yaml without zarr fails the check of lds_table, which reads zarr stores,
    with a sentence naming the rule, the env file and the module; the real file passes."""
    rule = "lds_table"
    env_path = tmp_path / "envs" / "eval.yaml"
    env_path.parent.mkdir()
    original = RULES[rule]["conda"].read_text()
    env_path.write_text(re.sub(r"^\s*- zarr.*\n", "", original, flags=re.M))
    assert "zarr" in EnvFile.read(RULES[rule]["conda"]).requirements()
    assert "zarr" not in EnvFile.read(env_path).requirements()
    assert undeclared(rule, RULES[rule]["script"], RULES[rule]["conda"]) == []
    [problem] = undeclared(rule, RULES[rule]["script"], env_path)
    assert problem.startswith("rule lds_table: envs/eval.yaml does not declare zarr, needed for module zarr (via ")


# The walker itself, on a package written here, against what each file plainly imports and calls.

FAKE = {
    "pkg/__init__.py": "import json\n",
    "pkg/a.py": "def f():\n    from .b import g\n    return g()\n\ndef never():\n    import pandas\n",
    "pkg/b.py": "import os\n\ndef g():\n    import numpy as np\n    return np\n",
    "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\nelse:\n    import scipy\n",
    "pkg/sub/__init__.py": "from ..c import x\n",
    "pkg/sub/d.py": "from . import e\nimport yaml.constructor\n\ndef run():\n    return e.Loader().load()\n",
    "pkg/sub/e.py": "class Loader:\n    def load(self):\n        from PIL import Image\n        return Image\n",
    "pkg/registry.py": ("import importlib\nSCORERS = {'one': 'pkg.sub.d:run'}\n\n"
                        "def load(kind):\n    m, _, n = SCORERS[kind].partition(':')\n"
                        "    return getattr(importlib.import_module(m), n)\n"),
    "pkg/unused.py": "import sklearn\n",
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
    script.write_text("import pkg.a\nfrom pkg import registry\npkg.a.f()\nregistry.load('one')\n")
    found = third_party_modules(script, fake_package, "pkg")
    # f (called) → pkg.b's g (called) → numpy; never() is never used, so no pandas; registry.load calls
    # import_module, so "pkg.sub.d:run" loads pkg.sub (→ pkg.c → scipy, not the TYPE_CHECKING torch) and
    # pkg.sub.d → yaml, and run → e.Loader → its method load → PIL; json and os are the standard library;
    # pkg.unused is never imported.
    assert set(found) == {"numpy", "scipy", "yaml", "PIL"}
    assert found["numpy"] == ["job.py", "pkg.a:f", "pkg.b:g"]
    assert found["yaml"] == ["job.py", "pkg.registry", "pkg.sub.d"]
    assert found["PIL"] == ["job.py", "pkg.registry", "pkg.sub.d", "pkg.sub.e:load"]


def test_walker_skips_registry_strings_nobody_loads(fake_package):
    script = fake_package / "job.py"
    script.write_text("from pkg.registry import SCORERS\nprint(SCORERS)\n")
    assert third_party_modules(script, fake_package, "pkg") == {}


def test_rule_directives_reads_nested_and_inline_values():
    text = (
        "X = 1\n\nif X:\n\n    rule one:\n        conda:\n            \"../envs/a.yaml\"\n"
        "        script:\n            \"../s/one.py\"\n\n\nrule two:\n    conda: '../envs/b.yaml'\n"
        "    params:\n        conda=1,\n    script:\n        \"../s/two.py\"\n\n\nrule three:\n    shell:\n"
        "        \"true\"\n\n\nscript_dir = 'x'\n"
    )
    assert rule_directives(text) == {
        "one": {"conda": "../envs/a.yaml", "script": "../s/one.py"},
        "two": {"conda": "../envs/b.yaml", "script": "../s/two.py"},
        "three": {},
    }
