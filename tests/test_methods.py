"""Kernel variants (RelatIF, renormalised IF, DAS weight) and gradient similarity / TracIn / GAS
against dense numpy computations (docs/methods.md §2.3, §2.4, §2.6, §2.7, §2.13)."""

import numpy as np
import pytest
import zarr

from diffattr.methods.registry import MethodInputs, ScoreContext
from diffattr.evaluate.lds import lds_from_predictions
from diffattr.methods.das import residual_weights
from diffattr.methods.gradient import checkpoint_weights, gradient_scores
from diffattr.methods.trak import column_weights, lambda_curve
from diffattr.schedule import learning_rate
from diffattr.store import gather_features, spec_hash, write_shard
from test_kernel import SPEC, stores


def dense_inverse(phi, lam_rel):
    gram = phi.T.astype(float) @ phi
    return np.linalg.inv(gram + lam_rel * np.trace(gram) / phi.shape[1] * np.eye(phi.shape[1]))


@pytest.mark.parametrize("n,k", [(11, 5), (6, 20)], ids=["primal", "dual"])
def test_relatif_and_renorm_weights_equal_dense_norms(tmp_path, n, k):
    phi = np.random.default_rng(0).normal(size=(n, k)).astype(np.float32)
    train, primal, dual = stores(tmp_path, phi, shard_size=4)
    inv = dense_inverse(phi, 0.5)
    for kernel in (primal, dual):
        relatif = column_weights(kernel, kernel.factor(0.5), train, "relatif")
        np.testing.assert_allclose(relatif, 1 / np.linalg.norm(inv @ phi.T.astype(float), axis=0), rtol=1e-8)
        renorm = column_weights(kernel, None, train, "renorm", residual=np.arange(1.0, n + 1))
        np.testing.assert_allclose(renorm, np.arange(1.0, n + 1) / np.linalg.norm(phi.astype(float), axis=1), rtol=1e-6)


def feature_store(path, phi):
    write_shard(str(path) + ".shard", phi, 0, len(phi), spec_hash(SPEC))
    gather_features([str(path) + ".shard"], [(0, len(phi))], spec_hash(SPEC), path)
    return str(path)


def truth_store(path, y):
    root = zarr.open_group(str(path), mode="w")
    root.create_array("val/y", data=y[None])
    return str(path)


@pytest.mark.parametrize("normalize", ["none", "relatif", "renorm"])
def test_lambda_curve_equals_lds_of_the_dense_weighted_scores(tmp_path, normalize, monkeypatch):
    rng = np.random.default_rng(3)
    phi = rng.normal(size=(12, 4)).astype(np.float32)
    queries = rng.normal(size=(5, 4)).astype(np.float32)
    stores(tmp_path, phi, shard_size=6)
    masks = rng.random((7, 12)) < 0.5
    y = rng.normal(size=(7, 5))
    monkeypatch.setattr("diffattr.methods.trak.read_pool", lambda path: masks)
    query_path = feature_store(tmp_path / "q.zarr", queries)
    truth = truth_store(tmp_path / "truth.zarr", y)
    residual = rng.random(12) + 0.5
    curve = lambda_curve(str(tmp_path / "primal.zarr"), str(tmp_path / "train.zarr"), {"val": query_path},
                         {"select": ("masks", truth)}, [0.1, 2.0], normalize=normalize, residual=residual)
    for lam, got in zip([0.1, 2.0], curve["lds"]):
        inv = dense_inverse(phi, lam)
        tau = queries.astype(float) @ inv @ phi.T.astype(float)
        w = {"none": np.ones(12), "renorm": 1 / np.linalg.norm(phi.astype(float), axis=1),
             "relatif": 1 / np.linalg.norm(inv @ phi.T.astype(float), axis=0)}[normalize] * residual
        expected = lds_from_predictions(-(masks.astype(float) @ (tau * w).T), y)
        assert got == pytest.approx(expected, abs=1e-10)


def test_das_residual_weight_is_the_mean_of_normalised_root_errors():
    errors = np.random.default_rng(4).random((6, 3))
    expected = [np.mean(np.sqrt(errors[:, i]) / np.sqrt(np.sum(errors[:, i]))) for i in range(3)]
    np.testing.assert_allclose(residual_weights(errors), expected, rtol=1e-12)
    assert residual_weights(np.ones((9, 2))) == pytest.approx([1 / 3, 1 / 3])  # flat residuals: 1/sqrt(T)


def test_checkpoint_weights_are_equal_or_interval_mean_learning_rates():
    assert checkpoint_weights([25, 50, 75, 100], "equal", 100, 1e-3, 0.1) == [0.25] * 4
    got = checkpoint_weights([50, 100], "learning_rate", 100, 1e-3, 0.1)
    lr = [learning_rate(s, 100, 1e-3, 0.1) for s in range(100)]
    assert got == pytest.approx([np.mean(lr[:50]), np.mean(lr[50:])])
    assert got[1] > 0  # the final checkpoint is not silenced by the schedule's end at 0


def gradient_inputs(tmp_path, train_phis, query_phis):
    return {"train": [feature_store(tmp_path / f"t{c}.zarr", t) for c, t in enumerate(train_phis)],
            "queries": [feature_store(tmp_path / f"q{c}.zarr", q) for c, q in enumerate(query_phis)]}


def test_tracin_on_one_checkpoint_is_grad_dot_times_learning_rate(tmp_path):
    rng = np.random.default_rng(5)
    train, query = rng.normal(size=(9, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    inputs = gradient_inputs(tmp_path, [train], [query])
    eta = checkpoint_weights([40], "learning_rate", 40, 2e-3, 0.0)[0]
    blocks = gradient_scores(ScoreContext.from_params({"features": "loss", "similarity": "dot", "weighting": "learning_rate", "weights": [eta]}, inputs, "val"))
    np.testing.assert_allclose(blocks.block(0, 4), eta * query.astype(float) @ train.T.astype(float), rtol=1e-6)


def test_gas_sums_weighted_cosines_over_checkpoints(tmp_path):
    rng = np.random.default_rng(6)
    trains = [rng.normal(size=(9, 6)).astype(np.float32) for _ in range(3)]
    queries = [rng.normal(size=(4, 6)).astype(np.float32) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]
    inputs = gradient_inputs(tmp_path, trains, queries)
    blocks = gradient_scores(ScoreContext.from_params({"features": ["a", "b", "c"], "similarity": "cosine", "weighting": "learning_rate", "weights": weights}, inputs, "val"))
    expected = sum(w * np.array([[np.dot(x, z) / np.linalg.norm(x) / np.linalg.norm(z) for z in t.astype(float)]
                                 for x in q.astype(float)]) for w, t, q in zip(weights, trains, queries))
    np.testing.assert_allclose(blocks.block(1, 4), expected[1:4], rtol=1e-6)


def test_journey_step_scores_equal_the_dense_formula_and_average_to_the_score(tmp_path):
    """Journey-TRAK (§2.12): τ_s = φ_s(x)ᵀ(ΦᵀΦ + λI)⁻¹Φᵀ per sampling step s with the select-pool λ;
    the method's gen score, from the step-averaged query features, is the mean of the step scores."""
    import pandas as pd

    from diffattr.methods.trak import trajectory_scores, trak_scores

    rng = np.random.default_rng(5)
    phi = rng.normal(size=(9, 4)).astype(np.float32)
    per_step = rng.normal(size=(3, 6, 4)).astype(np.float32)
    stores(tmp_path, phi, shard_size=5)
    write_shard(str(tmp_path / "j.shard"), per_step.mean(axis=1), 0, 3, spec_hash(SPEC),
                extras={"steps": per_step, "step_timesteps": np.tile(np.arange(500, -1, -100), (3, 1))})
    gather_features([str(tmp_path / "j.shard")], [(0, 3)], spec_hash(SPEC), tmp_path / "journey.zarr")
    pd.DataFrame({"set": "gen", "pool": "select", "lambda": [0.1, 0.7], "lds": [0.2, 0.5]}).to_csv(tmp_path / "l.csv")
    inputs = MethodInputs.of({"kernels": [tmp_path / "dual.zarr"], "train": [tmp_path / "train.zarr"],
                              "queries": [tmp_path / "journey.zarr"], "lambdas": [tmp_path / "l.csv"]})
    journey = {"features": "loss", "models": {"pool": "full", "count": 1}, "lambdas": [0.1, 0.7], "query": "journey"}
    timesteps = trajectory_scores(inputs, journey, str(tmp_path / "steps.zarr"), query_rows=12)
    assert list(timesteps) == [500, 400, 300, 200, 100, 0]
    got = np.asarray(zarr.open_group(str(tmp_path / "steps.zarr"), mode="r")["scores"][:])
    inv = dense_inverse(phi, 0.7)
    for s in range(6):
        np.testing.assert_allclose(got[s], per_step[:, s].astype(float) @ inv @ phi.T.astype(float), rtol=1e-5, atol=1e-6)
    blocks = trak_scores(ScoreContext.from_params(journey, inputs, "gen"))
    np.testing.assert_allclose(blocks.block(0, 3), got.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_the_oracle_curve_is_joined_with_the_select_pool_choice_marked():
    """The λ figure's dashed lds-pool rows come from the oracle_lambda job; their marker is the λ the
    select pool chose (what the scores use), not the lds pool's own best λ."""
    import pandas as pd

    from diffattr.methods.trak import choose_lambda, with_oracle

    grid = [0.01, 0.1, 1.0]
    select = pd.DataFrame({"set": ["val"] * 3 + ["gen"] * 3, "pool": "select", "lambda": grid * 2,
                           "lds": [0.1, 0.3, 0.2, 0.5, 0.1, 0.0], "chosen": [False, True, False, True, False, False]})
    oracle = pd.DataFrame({"set": ["val"] * 3 + ["gen"] * 3, "pool": "lds", "lambda": grid * 2,
                           "lds": [0.4, 0.1, 0.0, 0.0, 0.1, 0.6], "chosen": [True, False, False, False, False, True]})
    assert choose_lambda(oracle, "lds") == {"val": 0.01, "gen": 1.0}  # the oracle's own choice
    joined = with_oracle(select, oracle)
    lds_rows = joined[joined["pool"] == "lds"]
    assert lds_rows.loc[lds_rows["chosen"], ["set", "lambda"]].values.tolist() == [["val", 0.1], ["gen", 0.01]]
    assert choose_lambda(joined) == {"val": 0.1, "gen": 0.01} and len(joined) == 12


def test_score_blocks_from_a_matrix_serve_its_row_slices():
    from diffattr.methods.registry import ScoreBlocks

    scores = np.arange(12.0).reshape(4, 3)
    blocks = ScoreBlocks.from_matrix(scores, {"kind": "x"})
    assert (blocks.n_queries, blocks.n_train, blocks.attrs) == (4, 3, {"kind": "x"})
    assert np.array_equal(np.vstack([blocks.block(0, 3), blocks.block(3, 4)]), scores)


@pytest.mark.parametrize("n,k", [(11, 5), (6, 20)], ids=["primal", "dual"])
def test_mean_leverage_is_the_mean_training_self_score(tmp_path, n, k):
    """h̄ = mean_z φ(z)ᵀ(ΦᵀΦ + λI)⁻¹φ(z), by dense numpy in fp64, in both kernel forms."""
    from diffattr.kernel import mean_leverage

    phi = np.random.default_rng(1).normal(size=(n, k)).astype(np.float32)
    _, primal, dual = stores(tmp_path, phi, shard_size=4)
    for lam in (1e-3, 0.5, 1e3):
        inv, p = dense_inverse(phi, lam), phi.astype(float)
        want = np.mean(np.einsum("ik,kl,il->i", p, inv, p))
        for kernel in (primal, dual):
            assert mean_leverage(kernel, lam, kernel.factor(lam)) == pytest.approx(want, rel=1e-8)


def test_an_ensemble_of_a_small_and_a_large_lambda_weighs_both_members(tmp_path):
    """Issue 18 item 4: two members whose select pools chose λ = 1e-3 and 1e3 (relative). The plain
    average (ensemble_scale: none, §2.10) is the small-λ member alone, to 1 % here; the default puts
    each member on a common scale (÷ its mean leverage h̄, recomputed densely) and weighs both."""
    import pandas as pd

    from diffattr.methods.trak import trak_scores

    rng = np.random.default_rng(7)
    paths, dense = {"kernels": [], "train": [], "queries": [], "lambdas": []}, []
    for m, lam in enumerate((1e-3, 1e3)):
        phi, queries = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
        member = tmp_path / f"m{m}"
        member.mkdir()
        stores(member, phi, shard_size=40)
        pd.DataFrame({"set": "val", "pool": "select", "lambda": [lam], "lds": [0.3]}).to_csv(member / "l.csv")
        paths["kernels"].append(member / "primal.zarr")
        paths["train"].append(member / "train.zarr")
        paths["queries"].append(feature_store(member / "q.zarr", queries))
        paths["lambdas"].append(member / "l.csv")
        inv, p = dense_inverse(phi, lam), phi.astype(float)
        tau = queries.astype(float) @ inv @ p.T
        dense.append((tau, np.mean(np.einsum("ik,kl,il->i", p, inv, p))))
    inputs = MethodInputs.of(paths)
    block = {"features": "loss", "models": {"pool": "retrain", "count": 2}, "lambdas": [1e-3, 1e3]}
    plain = trak_scores(ScoreContext.from_params(block | {"ensemble_scale": "none"}, inputs, "val")).block(0, 6)
    scaled = trak_scores(ScoreContext.from_params(block, inputs, "val")).block(0, 6)
    (small, h_small), (large, h_large) = dense
    np.testing.assert_allclose(plain, (small + large) / 2, rtol=1e-5)
    assert np.abs(plain - small / 2).max() < 0.01 * np.abs(small / 2).max()  # the plain mean is member 0 alone
    np.testing.assert_allclose(scaled, (small / h_small + large / h_large) / 2, rtol=1e-5)
    share = np.abs(large / h_large).mean() / (np.abs(small / h_small).mean() + np.abs(large / h_large).mean())
    assert 0.2 < share < 0.8, share  # both members carry weight
