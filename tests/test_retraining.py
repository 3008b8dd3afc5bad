"""Empirical influence and datamodels (docs/methods.md §2.14, §2.15) against independent computations:
a plain loop for EI, sklearn's RidgeCV per query for datamodels, planted linear datamodels, and
the LDS vs number of retrained models (§4.4, §5.3)."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from diffattr.methods.retraining import datamodels, empirical_influence, fit_datamodels, lds_vs_models


@pytest.fixture(autouse=True)
def one_blas_thread():
    """The problems are tiny: threaded BLAS only oversubscribes the shared cores."""
    with threadpool_limits(limits=1):
        yield


def planted(m, n, q, noise, seed=0, eval_m=0):
    """Masks of ~50 % subsets and outputs from a planted linear datamodel y = A wᵀ + b + noise."""
    rng = np.random.default_rng(seed)
    masks = rng.random((m + eval_m, n)) < 0.5
    w = rng.normal(size=(q, n))
    b = rng.normal(size=q) + 5.0
    outputs = masks @ w.T + b + rng.normal(scale=noise, size=(m + eval_m, q))
    return masks[:m], outputs[:m], masks[m:], outputs[m:], w, b


def loop_ei(masks, outputs):
    ei = np.empty((outputs.shape[1], masks.shape[1]))
    for x in range(outputs.shape[1]):
        for i in range(masks.shape[1]):
            ei[x, i] = outputs[masks[:, i], x].mean() - outputs[~masks[:, i], x].mean()
    return ei


def test_empirical_influence_equals_a_plain_loop():
    masks, outputs, *_ = planted(40, 25, 6, noise=1.0)
    ours = empirical_influence(masks, outputs)
    assert ours.shape == (6, 25)
    np.testing.assert_allclose(ours, loop_ei(masks, outputs), rtol=1e-12, atol=1e-12)
    # 0/1 integer masks are accepted as well as booleans
    np.testing.assert_allclose(empirical_influence(masks.astype(np.int8), outputs), ours, rtol=0, atol=0)


def test_empirical_influence_recovers_planted_weights_in_loss_units():
    masks, outputs, _, _, w, _ = planted(800, 30, 4, noise=0.1, seed=1)
    ei = empirical_influence(masks, outputs)
    for x in range(4):
        assert np.corrcoef(ei[x], w[x])[0, 1] > 0.9  # positive: a sample that raises the loss scores > 0


@pytest.mark.parametrize("column, where", [("all", "in all of the 12 subsets"), ("none", "in none of the 12 subsets")])
def test_empirical_influence_names_a_degenerate_sample(column, where):
    masks, outputs, *_ = planted(12, 10, 3, noise=1.0, seed=2)
    masks[:, 7] = column == "all"
    with pytest.raises(ValueError, match=rf"training sample 7 is {where}"):
        empirical_influence(masks, outputs)


def test_empirical_influence_lists_several_degenerate_samples():
    masks, outputs, *_ = planted(12, 10, 3, noise=1.0, seed=2)
    masks[:, [2, 5]] = False
    with pytest.raises(ValueError, match=r"training samples 2, 5 are in none of the 12 subsets"):
        empirical_influence(masks, outputs)


@pytest.mark.parametrize("bad, message", [
    (lambda mk, y: (mk[:-1], y), "masks has 11 models"),
    (lambda mk, y: (mk.astype(float) * 2, y), "masks must be boolean"),
    (lambda mk, y: (mk, np.where(np.eye(12, 3, dtype=bool), np.nan, y)), "non-finite value .model 0, query 0"),
    (lambda mk, y: (mk[0], y), "masks must be a 2-D"),
])
def test_inputs_are_checked(bad, message):
    masks, outputs, *_ = planted(12, 10, 3, noise=1.0, seed=3)
    masks, outputs = bad(masks, outputs)
    for fn in (empirical_influence, datamodels):
        with pytest.raises(ValueError, match=message):
            fn(masks, outputs)


@pytest.mark.parametrize("m, n", [(60, 80), (80, 30)])  # more features than models (sklearn's dual path) and fewer
def test_datamodels_equal_sklearn_ridgecv_per_query(m, n):
    rng = np.random.default_rng(0)
    masks = rng.random((m, n)) < 0.5
    w = rng.normal(size=(12, n))
    outputs = masks @ w.T + rng.normal(size=(m, 12)) * np.geomspace(0.05, 20, 12)  # SNR varies: α varies
    fit = fit_datamodels(masks, outputs, alphas=(0.1, 1.0, 10.0), cv=5)
    assert len(set(fit.alpha)) >= 2, "the test should exercise several α choices"
    for x in range(12):
        ref = RidgeCV(alphas=(0.1, 1.0, 10.0), cv=KFold(5)).fit(masks.astype(float), outputs[:, x])
        assert fit.alpha[x] == ref.alpha_
        assert fit.best_score[x] == pytest.approx(ref.best_score_, abs=1e-10)
        np.testing.assert_allclose(fit.weights[x], ref.coef_, rtol=1e-9, atol=1e-11)
        assert fit.intercepts[x] == pytest.approx(ref.intercept_, abs=1e-10)
    np.testing.assert_array_equal(datamodels(masks, outputs), fit.weights)
    assert sum(fit.alpha_counts().values()) == 12


def test_datamodels_shuffled_folds_equal_sklearn_with_the_same_folds():
    masks, outputs, *_ = planted(50, 20, 3, noise=2.0, seed=4)
    fit = fit_datamodels(masks, outputs, alphas=(0.5, 5.0), cv=4, seed=7, shuffle=True)
    for x in range(3):
        folds = KFold(4, shuffle=True, random_state=7)
        ref = RidgeCV(alphas=(0.5, 5.0), cv=folds).fit(masks.astype(float), outputs[:, x])
        assert fit.alpha[x] == ref.alpha_
        np.testing.assert_allclose(fit.weights[x], ref.coef_, rtol=1e-9, atol=1e-11)


def test_datamodels_recover_planted_weights():
    masks, outputs, _, _, w, b = planted(400, 40, 5, noise=0.2, seed=5)
    fit = fit_datamodels(masks, outputs)
    assert fit.weights.shape == (5, 40)
    for x in range(5):
        assert np.corrcoef(fit.weights[x], w[x])[0, 1] > 0.95
        assert np.mean(np.sign(fit.weights[x]) == np.sign(w[x])) > 0.9
    np.testing.assert_allclose(fit.intercepts, b, atol=0.5)


def test_datamodels_check_the_grid_and_folds():
    masks, outputs, *_ = planted(12, 10, 3, noise=1.0, seed=6)
    with pytest.raises(ValueError, match="positive"):
        datamodels(masks, outputs, alphas=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"cv=13 folds need 2 ≤ cv ≤ the number of subset models \(12\)"):
        datamodels(masks, outputs, cv=13)
    masks[:, 4] = True  # a sample in every subset is harmless here: its centred column is 0, so is its weight
    assert datamodels(masks, outputs)[:, 4] == pytest.approx(0.0, abs=1e-12)


def test_lds_vs_models_planted_model_is_high_and_shuffled_scores_are_zero():
    masks, outputs, eval_masks, eval_truth, w, _ = planted(256, 30, 8, noise=0.5, seed=8, eval_m=64)
    table = lds_vs_models(masks, outputs, eval_masks, eval_truth, [32, 256], ["empirical_influence", "datamodels"],
                          resamples=16)
    assert list(table["method"]) == ["empirical_influence"] * 2 + ["datamodels"] * 2
    assert list(table["n_models"]) == [32, 256, 32, 256]
    for method, group in table.groupby("method"):
        assert group["lds"].iloc[1] > 0.9
        assert group["lds"].iloc[1] >= group["lds"].iloc[0] - 0.02  # more models: no worse
    dm = table[table["method"] == "datamodels"]
    assert (dm[["alpha=0.1", "alpha=1", "alpha=10"]].sum(axis=1) == 8).all()
    assert table[table["method"] == "empirical_influence"]["alpha=1"].isna().all()
    assert (table["std"] > 0).all() and (table["ci_low"] <= table["ci_high"]).all()

    # independent LDS of the top row: scipy's Spearman on +Aτᵀ
    scores = datamodels(masks, outputs)
    pred = eval_masks @ scores.T
    expected = np.mean([spearmanr(pred[:, x], eval_truth[:, x]).statistic for x in range(8)])
    assert dm["lds"].iloc[1] == pytest.approx(expected, abs=1e-12)

    # scores shuffled across training samples carry no information: LDS ≈ 0
    rng = np.random.default_rng(9)
    lds_shuffled = []
    for _ in range(20):
        perm = scores[:, rng.permutation(30)]
        p = eval_masks @ perm.T
        lds_shuffled.append(np.mean([spearmanr(p[:, x], eval_truth[:, x]).statistic for x in range(8)]))
    assert abs(np.mean(lds_shuffled)) < 0.1


def test_lds_vs_models_checks_its_arguments():
    masks, outputs, eval_masks, eval_truth, *_ = planted(20, 10, 3, noise=1.0, seed=10, eval_m=8)
    with pytest.raises(ValueError, match=r"model counts \[21\] are outside 1..20"):
        lds_vs_models(masks, outputs, eval_masks, eval_truth, [10, 21], "datamodels")
    with pytest.raises(ValueError, match="unknown retraining method"):
        lds_vs_models(masks, outputs, eval_masks, eval_truth, [10], "trak")
    with pytest.raises(ValueError, match="evaluation ground truth has 2 queries"):
        lds_vs_models(masks, outputs, eval_masks, eval_truth[:, :2], [10], "datamodels")


def test_lds_vs_models_fits_fewer_models_than_folds_leave_one_out():
    """A curve point with M' < K models (e.g. 4 models, 5 folds) uses M' folds, and says so."""
    masks, outputs, eval_masks, eval_truth, _, _ = planted(40, 12, 3, noise=0.5, seed=3, eval_m=16)
    table = lds_vs_models(masks, outputs, eval_masks, eval_truth, [4, 40], "datamodels", cv=5)
    assert list(table["cv"]) == [4, 5]
    pred = eval_masks @ datamodels(masks[:4], outputs[:4], cv=4).T
    expected = np.mean([spearmanr(pred[:, x], eval_truth[:, x]).statistic for x in range(3)])
    assert table["lds"].iloc[0] == pytest.approx(expected, abs=1e-12)


def test_lds_vs_models_marks_undefined_empirical_influence_instead_of_failing():
    """EI needs every sample both in and out of some model: with 2 models that fails for most
    samples, so that curve point is NaN with the reason, and the others are computed."""
    masks, outputs, eval_masks, eval_truth, _, _ = planted(40, 12, 3, noise=0.5, seed=4, eval_m=16)
    table = lds_vs_models(masks, outputs, eval_masks, eval_truth, [2, 40], "empirical_influence")
    assert np.isnan(table["lds"].iloc[0]) and "are in all of the 2 subsets" in table["note"].iloc[0]
    assert table["note"].iloc[1] == "" and table["lds"].iloc[1] > 0.5
