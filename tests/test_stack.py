"""Stacking (diffattr/methods/stack.py, docs/methods.md §2.19): weights fit on the select pool recover
a synthetic ground truth built from two known score matrices, and the stack scores like any method."""

import numpy as np
import pytest
import zarr

from diffattr.evaluate.lds import lds_from_predictions, predicted_outputs
from diffattr.ground_truth import gather, write_measurement
from diffattr.integrity import array_options, seal
from diffattr.methods.registry import HELPS, LOSS_UNITS, score_method
from diffattr.methods.stack import fit_weights, standardize_rows, zscore_columns
from diffattr.scores import read_score_rows, score_attrs, write_scores

N, N_QUERIES, M = 300, 20, 48
TRUE = np.asarray([0.7, 0.3])


def _standardized(v):
    """Reference of standardize_rows written out with numpy's own mean/std per row."""
    return np.stack([(r - r.mean()) / r.std() for r in v])


def _world(seed=0):
    """Two score matrices in different units and sign conventions, and a ground truth whose
    predicted-output part is −A·(0.7·u₁ + 0.3·u₂)ᵀ on every pool, times a per-query scale, plus an
    offset and noise (u: the rows put in "larger helps" and standardised)."""
    rng = np.random.default_rng(seed)
    tau1 = 1000.0 * rng.normal(size=(N_QUERIES, N))  # HELPS: larger helps
    tau2 = 1e-3 * rng.normal(size=(N_QUERIES, N))  # LOSS_UNITS: larger hurts
    u = TRUE[0] * _standardized(tau1) + TRUE[1] * _standardized(-tau2)
    scale, offset = rng.uniform(0.5, 5, N_QUERIES), rng.normal(size=N_QUERIES) * 10

    def pool(count):
        masks = rng.random((count, N)) < 0.5
        y = (-(masks.astype(float) @ u.T)) * scale + offset + rng.normal(size=(count, N_QUERIES)) * 2.0
        return masks, y

    return tau1, tau2, pool


def test_standardize_and_zscore_match_numpy():
    v = np.random.default_rng(1).normal(size=(4, 30)) * 7 + 3
    np.testing.assert_allclose(standardize_rows(v, HELPS), _standardized(v))
    np.testing.assert_allclose(standardize_rows(v, LOSS_UNITS), _standardized(-v))
    assert not standardize_rows(np.ones((2, 5)), HELPS).any()  # a constant row: zeros, not NaN
    np.testing.assert_allclose(zscore_columns(v.T), _standardized(v).T)


def test_fitted_weights_recover_the_truth_and_equal_a_brute_force_search():
    tau1, tau2, pool = _world()
    masks, y = pool(M)
    preds = [predicted_outputs(masks, [(0, standardize_rows(t, s))], N_QUERIES, -1)
             for t, s in ((tau1, HELPS), (tau2, LOSS_UNITS))]
    w = fit_weights(preds, y)
    assert w.sum() == pytest.approx(1) and (w >= 0).all()
    assert np.abs(w - TRUE).max() < 0.05
    # brute force: the direction on the simplex whose best-scaled combination fits z(Y) best
    z = zscore_columns(y).ravel()
    cols = [(p - p.mean(axis=0)).ravel() for p in preds]
    best = min(np.linspace(0, 1, 1001), key=lambda a: np.sum((z - (d := a * cols[0] + (1 - a) * cols[1])
                                                              * (d @ z) / (d @ d)) ** 2))
    assert abs(w[0] - best) < 2e-3
    assert np.allclose(fit_weights(preds, y, "equal"), 0.5)


def _write_masks(path, masks):
    root = zarr.open_group(str(path), mode="w")
    root.create_array("masks", data=masks, **array_options())
    seal(root)


def _write_truth(tmp_path, name, y, split):
    paths = {}
    for k, row in enumerate(y):
        paths[(k, 0)] = str(tmp_path / f"{name}_m{k}.zarr")
        write_measurement(paths[(k, 0)], {split: row[None, :]}, np.asarray([[0, 1]]))
    gather(paths, [split], tmp_path / f"{name}.zarr")
    return str(tmp_path / f"{name}.zarr")


def test_stack_job_fits_on_select_and_beats_each_component_on_the_lds_pool(tmp_path):
    tau1, tau2, pool = _world(seed=3)
    (sel_masks, sel_y), (lds_masks, lds_y) = pool(M), pool(M)
    stores = []
    for name, tau, sign in (("a", tau1, HELPS), ("b", tau2, LOSS_UNITS)):
        stores.append(str(tmp_path / f"{name}.zarr"))
        write_scores(stores[-1], N_QUERIES, N, lambda s, e, t=tau: t[s:e], 7, {"kind": "x", "sign": sign})
    _write_masks(tmp_path / "select_masks.zarr", sel_masks)
    truth = _write_truth(tmp_path, "select_truth", sel_y, "gen")
    out = str(tmp_path / "stack.zarr")
    inputs = {"components": stores, "masks": str(tmp_path / "select_masks.zarr"), "truth": truth}
    score_method({"kind": "stack", "methods": ["a", "b"]}, inputs, "gen", out, block_rows=6)
    attrs = score_attrs(out)
    assert attrs["sign"] == HELPS and attrs["components"] == ["a", "b"]
    assert np.abs(np.asarray(attrs["weights"]) - TRUE).max() < 0.05
    assert attrs["chosen"].startswith("weights a 0.") and "on select" in attrs["chosen"]
    stacked = read_score_rows(out, 0, N_QUERIES)
    w = attrs["weights"]
    np.testing.assert_allclose(stacked, w[0] * _standardized(tau1) + w[1] * _standardized(-tau2), rtol=1e-4, atol=1e-5)
    # on the untouched lds pool the stack beats both components (each carries part of the truth)
    lds = {name: lds_from_predictions(predicted_outputs(lds_masks, [(0, s)], N_QUERIES, sign), lds_y)
           for name, s, sign in (("a", tau1, HELPS), ("b", tau2, LOSS_UNITS), ("stack", stacked, HELPS))}
    assert lds["stack"] > max(lds["a"], lds["b"]) + 0.05, lds


def test_the_plan_feeds_a_stack_its_components_scores_and_the_select_pool(tmp_path):
    from plans import plan_of

    plan = plan_of({"output_dir": str(tmp_path / "out"),
                    "evaluation": {"methods": ["pixel_l2", "random", "s"]},
                    "counterfactual": {"methods": []},
                    "methods": {"s": {"kind": "stack", "methods": ["pixel_l2", "random"]}}})
    out = str(tmp_path / "out")
    assert plan.method_inputs("s", "gen") == {
        "components": [f"{out}/scores/pixel_l2/gen.zarr", f"{out}/scores/random/gen.zarr"],
        "masks": f"{out}/subsets/select.zarr", "truth": f"{out}/ground_truth/select.zarr"}
    counts = plan.job_counts()  # no kernel method: the select pool is trained for the stack alone
    assert counts["gather_ground_truth"] == 2 and counts["measure_outputs"] == (16 + 8) // 4
    assert counts["score"] == 6 and "featurize" not in counts


@pytest.mark.parametrize("update,sentence", [
    ({"methods": {"s": {"kind": "stack", "methods": ["pixel_l2", "trak"]}}},
     "Config key 'methods.s.methods' names 'trak', which 'evaluation.methods' does not evaluate, so it has no scores to stack."),
    ({"methods": {"s": {"kind": "stack", "methods": ["pixel_l2", "nope"]}}},
     "Config key 'methods.s.methods' names 'nope', which is not a block under 'methods'."),
    ({"methods": {"s": {"kind": "stack", "methods": ["pixel_l2", "t"]}, "t": {"kind": "stack", "methods": ["pixel_l2", "random"]}},
      "evaluation": {"methods": ["pixel_l2", "random", "s", "t"]}},
     "Config key 'methods.s.methods' names 't', which is itself a stack; stack its components instead."),
    ({"subsets": {"pools": {"select": {"count": 1}}}},
     "Config key 'subsets.pools.select.count' is 1, but methods.s fits its weights on the select pool, which needs at "
     "least 2 subset models."),
    ({"methods": {"s": {"kind": "stack", "methods": ["pixel_l2"]}}}, "Config key 'methods.s.methods'"),
])
def test_a_bad_stack_is_refused_in_one_sentence_before_any_job(tmp_path, update, sentence):
    from diffattr.cli import merge_configs
    from diffattr.config import ConfigError
    from plans import plan_of

    base = {"output_dir": str(tmp_path / "out"), "evaluation": {"methods": ["pixel_l2", "random", "s"]},
            "counterfactual": {"methods": []}, "methods": {"s": {"kind": "stack", "methods": ["pixel_l2", "random"]}}}
    with pytest.raises(ConfigError) as err:
        plan_of(merge_configs(base, update))
    assert sentence in str(err.value) and str(err.value).count(". ") == 0
