"""A method kind added from this one file: its module (a settings dataclass, a scorer and the
kind's declaration, registered when imported) and its config block (``plugins`` names the module).
Nothing else in the repository knows it, yet the schema accepts and checks its block, the plan gives
it score and LDS jobs, and a real Snakemake run scores it and evaluates it like any built-in kind.

The toy kind: τ(x, z) = −scale · ‖x − z‖₁ over pixels (a negative L1 distance, sign HELPS)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import spearmanr

from diffattr.config import ConfigError
from diffattr.methods.registry import HELPS, MethodKind, ScoreBlocks, ScoreContext, register

MODULE = "test_plugin_kind"


@dataclass(frozen=True)
class ToySettings:
    scale: float = 1.0


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64)


def toy_scores(ctx: ScoreContext) -> ScoreBlocks:
    """−scale · ‖x − z‖₁ for each attributed x and training z."""
    from diffattr.data.store import read_images

    scale = ToySettings(**ctx.settings).scale
    train = _flat(read_images(ctx.inputs.data, "train"))
    queries = _flat(read_images(ctx.inputs.images(ctx.query_set), ctx.query_set))
    return ScoreBlocks(len(queries), len(train),
                       lambda a, b: -scale * np.abs(queries[a:b, None, :] - train[None]).sum(axis=2))


KIND = register(MethodKind("toy_l1", HELPS, ("data", "generated"), f"{MODULE}:toy_scores",
                           "negative pixel L1 distance (a test plugin)", settings=f"{MODULE}:ToySettings"))

BLOCK = {"kind": "toy_l1", "scale": 2.0}


def layer(out: str, methods: list[str]) -> dict:
    return {"output_dir": out, "plugins": [MODULE], "methods": {"toy": BLOCK}, "evaluation": {"methods": methods}}


def test_the_plan_gives_the_plugin_kind_its_jobs(tmp_path):
    from plans import plan_of

    base = plan_of({"output_dir": str(tmp_path / "out"), "evaluation": {"methods": ["pixel_l2"]}})
    plan = plan_of(layer(str(tmp_path / "out"), ["pixel_l2", "toy"]))
    before, after = base.job_counts(), plan.job_counts()
    assert {r: after.get(r, 0) - before.get(r, 0) for r in after if after.get(r, 0) != before.get(r, 0)} == {
        "score": 2, "evaluate_lds": 1}  # {val, gen} and its LDS (config.yaml's report.methods names others)
    L = plan.layout
    assert plan.method_inputs("toy", "gen") == {"data": L.data, "generated": L.generated}
    assert plan.method_inputs("toy", "val") == {"data": L.data}
    assert plan.method_params("toy") == BLOCK  # no model, no ground truth: the kind needs neither


@pytest.mark.parametrize("block, key", [({"kind": "toy_l1", "scale": "big"}, "methods.toy.scale"),
                                        ({"kind": "toy_l1", "sharpness": 1}, "methods.toy.sharpness")])
def test_the_schema_checks_the_plugin_block_from_its_settings_dataclass(tmp_path, block, key):
    from plans import plan_of

    with pytest.raises(ConfigError, match=f"onfig key '{key}'"):
        plan_of({"output_dir": str(tmp_path / "out"), "plugins": [MODULE], "methods": {"toy": block},
                 "evaluation": {"methods": ["toy"]}})


def test_a_plugin_module_that_does_not_import_is_refused(tmp_path):
    from plans import plan_of

    with pytest.raises(ConfigError, match="Config key 'plugins' names module 'no_such_plugin'"):
        plan_of({"output_dir": str(tmp_path / "out"), "plugins": ["no_such_plugin"]})


@pytest.mark.workflow
def test_the_plugin_kind_runs_through_the_workflow(smoke, tmp_path):
    """Over the finished smoke run: the toy's scores are −2·L1 of the stored images (brute force) and
    its LDS is the mean Spearman correlation of −s·A·τᵀ… recomputed here with scipy."""
    import yaml

    from diffattr.data.store import read_images
    from diffattr.ground_truth import read_ground_truth
    from diffattr.scores import open_scores
    from diffattr.subsets import read_pool
    from diffattr.workflow.layout import Layout
    from workflow import overlay, snakemake

    with open(smoke.config) as f:
        out = yaml.safe_load(f)["output_dir"]
    with open("config/smoke.yaml") as f:
        methods = yaml.safe_load(f)["evaluation"]["methods"]
    L = Layout(out)
    toy = overlay(tmp_path, "toy", layer(out, [*methods, "toy"]))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))}
    result = snakemake("--cores", "2", L.method_lds.format(method="toy"), *smoke.args(toy), env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lds = __import__("pandas").read_csv(L.method_lds.format(method="toy")).set_index("set")
    masks = read_pool(L.subset_masks.format(pool="lds")).astype(np.float64)
    train = _flat(read_images(L.data, "train"))
    for split, store in (("val", L.data), ("gen", L.generated)):
        queries = _flat(read_images(store, split))
        expected = -2.0 * np.abs(queries[:, None, :] - train[None]).sum(axis=2)
        scores = np.asarray(open_scores(L.scores.format(method="toy", set=split))[:])
        np.testing.assert_allclose(scores, expected, rtol=1e-6)
        truth = read_ground_truth(L.ground_truth.format(pool="lds"), split)
        predicted = HELPS * masks @ scores.T  # larger τ helps: lower predicted loss
        rhos = [spearmanr(predicted[:, q], truth[:, q]).statistic for q in range(len(queries))]
        assert lds.loc[split, "lds"] == pytest.approx(np.nanmean(rhos), abs=1e-9)
        assert lds.loc[split, "kind"] == "toy_l1"
