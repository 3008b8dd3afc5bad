"""A DDPM job imports only what it runs (issue 17, item 2): a structural guard, not a timing test.

``transformers`` and ``peft`` cost ≈ 1.5 s per process and a DDPM never uses them; ``matplotlib`` is
display code. A subprocess runs the top-level imports of ``workflow_scripts/train_model.py`` and
``featurize.py``, builds, saves, loads and runs a DDPM, and reports ``sys.modules``; it then imports
what :mod:`diffattr.models.diffusers_classes` deferred, to show the deferral hides nothing.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types

import pytest

from conftest import REPO

FORBIDDEN = ("transformers", "peft", "matplotlib")

CHILD = r"""
import ast, json, sys, tempfile
from pathlib import Path
import yaml

repo = Path(sys.argv[1])
for script in ("train_model", "featurize"):
    tree = ast.parse((repo / "workflow_scripts" / f"{script}.py").read_text())
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(ast.unparse(node), {})
import torch
from diffattr.models.family import denoise, fresh_model, load_model, save_model

params = yaml.safe_load((repo / "config.yaml").read_text())["model"]
assert params.get("family", "ddpm") == "ddpm", params  # the guard is about the DDPM family
with tempfile.TemporaryDirectory() as tmp:
    path = str(Path(tmp) / "m.safetensors")
    save_model(fresh_model(params, seed=0), path, {"step": 0})
    model = load_model(path, params)
    c, h, w = model.sample_shape()
    denoise(model.network, torch.zeros(2, c, h, w), torch.tensor([1, 500]))
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
unets_deferred = type(sys.modules["diffusers.models.unets"]).__name__

import diffusers
import diffusers.models.unets as unets
import diffusers.models.transformers as transformers_pkg
from diffusers.models.unets import UNet2DConditionModel  # runs the deferred __init__
transformers_pkg.Transformer2DModel  # noqa: B018
from diffattr.models.diffusers_classes import DDIMScheduler, DDPMScheduler, UNet2DModel
print(json.dumps({
    "loaded": loaded,
    "unets_deferred": unets_deferred,
    "unets_names": sorted(n for n in vars(unets) if not n.startswith("_")),
    "transformers_names": sorted(n for n in vars(transformers_pkg) if not n.startswith("_")),
    "same_classes": [UNet2DModel is diffusers.UNet2DModel, DDPMScheduler is diffusers.DDPMScheduler,
                     DDIMScheduler is diffusers.DDIMScheduler,
                     UNet2DConditionModel is diffusers.UNet2DConditionModel],
    "unets_file": unets.__file__,
    "transformers_file": transformers_pkg.__file__,
}))
"""


def exported_names(init_file: str) -> set[str]:
    """The names a package ``__init__`` binds with ``from .x import A, B`` at any depth (its eager
    re-exports), read from its source."""
    tree = ast.parse(open(init_file).read())
    return {alias.asname or alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 for alias in node.names}


@pytest.fixture(scope="module")
def ddpm_job() -> dict:
    """What the subprocess that imports and runs a DDPM job's code reports."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), ",".join(FORBIDDEN)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ddpm_job_does_not_import_heavy_packages(ddpm_job: dict) -> None:
    assert ddpm_job["loaded"] == []
    assert ddpm_job["unets_deferred"] == "DeferredPackage"  # the guard ran the light path


def test_deferred_packages_are_complete_once_used(ddpm_job: dict) -> None:
    for package in ("unets", "transformers"):
        expected = exported_names(ddpm_job[f"{package}_file"])
        assert len(expected) > 5
        assert expected <= set(ddpm_job[f"{package}_names"])
    assert all(ddpm_job["same_classes"])


def make_package(root, name: str) -> None:
    """A package ``name`` whose ``__init__`` records that it ran and re-exports ``Heavy`` from a
    submodule; a second submodule ``light`` stands alone."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("RAN = True\nfrom .heavy import Heavy\n")
    (pkg / "heavy.py").write_text("class Heavy: pass\n")
    (pkg / "light.py").write_text("VALUE = 3\n")


def test_deferred_package_runs_init_on_first_other_lookup(tmp_path, monkeypatch) -> None:
    from diffattr.models.diffusers_classes import DeferredPackage, defer_package

    make_package(tmp_path, "toy_deferred_pkg")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = [n for n in sys.modules if n.startswith("toy_deferred_pkg")]
    assert names == []
    try:
        defer_package("toy_deferred_pkg")
        pkg = sys.modules["toy_deferred_pkg"]
        assert isinstance(pkg, DeferredPackage)
        from toy_deferred_pkg.light import VALUE

        assert VALUE == 3 and "RAN" not in vars(pkg) and "toy_deferred_pkg.heavy" not in sys.modules
        from toy_deferred_pkg import Heavy  # a name the __init__ binds: the __init__ runs now

        assert pkg.RAN is True and Heavy is sys.modules["toy_deferred_pkg.heavy"].Heavy
        assert type(pkg) is types.ModuleType
        with pytest.raises(AttributeError):
            pkg.missing  # noqa: B018
    finally:
        for n in [n for n in sys.modules if n.startswith("toy_deferred_pkg")]:
            del sys.modules[n]


def test_hidden_makes_a_package_unimportable_only_inside(tmp_path, monkeypatch) -> None:
    from diffattr.models.diffusers_classes import hidden

    make_package(tmp_path, "toy_hidden_pkg")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with hidden(("toy_hidden_pkg",)):
            with pytest.raises(ImportError):
                import toy_hidden_pkg.light  # noqa: F401
        import toy_hidden_pkg.light  # noqa: F401, F811

        assert sys.modules["toy_hidden_pkg"].RAN is True
        with hidden(("toy_hidden_pkg",)):  # an imported package is left alone
            import toy_hidden_pkg  # noqa: F401
    finally:
        for n in [n for n in sys.modules if n.startswith("toy_hidden_pkg")]:
            del sys.modules[n]

