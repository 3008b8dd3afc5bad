"""Counterfactual evaluation (docs/methods.md §4.5, §5.4): removal sets, the retraining plan, retraining
on the kept images, regeneration from identical noise, and the metrics, each against an independent
computation (hand formulas, numpy/pandas, D-TRAK's recorded sample indices)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import SCHEDULER, TINY_UNET
from diffattr import counterfactual as cf
from diffattr.atomic import write_csv
from diffattr.methods.embedding import EmbeddingConfig, embed
from diffattr.models.ddpm import build_unet, load_unet, save_weights
from diffattr.models.family import Model
from diffattr.noise import gaussian_noise
from diffattr.sample import ddim_trajectory, image_seeds

TRAIN = {"steps": 4, "batch_size": 8, "lr": 2e-3, "checkpoint_fractions": [0.5, 1.0], "resume_every": 2, "log_every": 2}
PARAMS = {
    "unet": TINY_UNET,
    "scheduler": SCHEDULER,
    "train": TRAIN,
    "generate": {"count": 6, "steps": 5, "eta": 0.0, "seed": 0, "batch_size": 2},
    "ground_truth": {"timestep_strategy": "uniform", "timesteps": 4, "noise_seeds": [0, 1], "batch_size": 3},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two different tiny UNets saved as checkpoints: (path A, path B)."""
    root = tmp_path_factory.mktemp("cf_models")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_unet(TINY_UNET).eval()
        path = root / f"model{seed}.safetensors"
        save_weights(model, path, {"seed": seed})
        paths.append(str(path))
    return tuple(paths)


def hand_quantize(images: np.ndarray) -> np.ndarray:
    """[−1, 1] float → 8-bit levels → [−1, 1] float, written out independently of the store helpers."""
    return np.clip(np.rint((images.astype(np.float64) + 1.0) * 127.5), 0, 255) / 127.5 - 1.0


def hand_abar() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


@torch.no_grad()
def hand_l_simple(model, images: np.ndarray, split: str, pairs: np.ndarray) -> np.ndarray:
    """Pair-averaged mean_d (ε_θ(x_t, t) − ε)² with x_t = √ᾱ_t x + √(1−ᾱ_t) ε, one image at a time."""
    abar = hand_abar()
    total = np.zeros(len(images))
    for seed, t in pairs:
        eps = gaussian_noise(int(seed), split, np.arange(len(images)), np.asarray([t]), images.shape[1:])[:, 0]
        for i in range(len(images)):
            x0, e = torch.from_numpy(images[i : i + 1]).double(), torch.from_numpy(eps[i : i + 1]).double()
            x_t = (abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * e).float()
            pred = model(x_t, torch.tensor([int(t)])).sample.double()
            total[i] += float(((pred - e) ** 2).mean())
    return total / len(pairs)


@torch.no_grad()
def hand_ddim(model, seeds: np.ndarray, steps: int) -> np.ndarray:
    """DDIM η = 0 written out: x_T from default_rng(seed); timesteps (S−1..0)·(T/S); x̂₀ clamped to
    [−1, 1]; x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev) ε̂ with ᾱ_prev = 1 after t = 0; final clamp."""
    abar = hand_abar()
    x = torch.from_numpy(np.stack([np.random.default_rng(int(s)).standard_normal((1, 8, 8), dtype=np.float32)
                                   for s in seeds])).double()
    stride = 1000 // steps
    for t in range(stride * (steps - 1), -1, -stride):
        eps = model(x.float(), torch.full((len(x),), t)).sample.double()
        x0 = ((x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)
        a_prev = abar[t - stride] if t - stride >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.clamp(-1, 1).numpy()


# ------------------------------------------------------------------------------------ removal sets


def test_counterfactual_samples_are_dtraks_recorded_indices():
    # D-TRAK's get_indices_gen / 03_counter_eval notebooks print these (CIFAR-2: 42, ArtBench-2: 0)
    assert cf.counterfactual_samples(1000, 60, 42)[:5].tolist() == [521, 737, 740, 660, 411]
    assert cf.counterfactual_samples(1000, 60, 0)[:5].tolist() == [993, 859, 298, 553, 672]
    chosen = cf.counterfactual_samples(200, 20, 3)
    assert len(set(chosen.tolist())) == 20 and chosen.min() >= 0 and chosen.max() < 200


def test_removal_set_ranks_by_responsibility_with_ties():
    tau = np.array([0.5, 2.0, 2.0, -1.0, 0.5, -1.0])
    # HELPS (−1): largest τ first; LOSS_UNITS (+1): most negative τ first; ties → lower index
    assert cf.removal_set(tau, -1, 4).tolist() == [1, 2, 0, 4]
    assert cf.removal_set(tau, +1, 4).tolist() == [3, 5, 0, 4]
    assert cf.removal_set(tau, -1, 0).tolist() == []
    rng = np.random.default_rng(0)
    for sign in (-1, 1):
        for _ in range(5):
            row = rng.integers(-3, 4, size=40).astype(np.float32)  # many ties
            for k in (1, 7, 40):
                # ascending s·τ (= descending −s·τ), ties by ascending index
                expected = np.lexsort((np.arange(40), sign * row.astype(np.float64)))[:k]
                np.testing.assert_array_equal(cf.removal_set(row, sign, k), expected)
    with pytest.raises(ValueError):
        cf.removal_set(tau, -1, 7)
    with pytest.raises(ValueError):
        cf.removal_set(tau, 0, 2)


def test_random_removal_set_is_a_pure_function_of_seed_sample_and_k():
    a = cf.random_removal_set(1000, 50, 7, 3)
    np.testing.assert_array_equal(a, cf.random_removal_set(1000, 50, 7, 3))
    assert len(a) == 50 and len(np.unique(a)) == 50 and a.min() >= 0 and a.max() < 1000
    assert not np.array_equal(a, cf.random_removal_set(1000, 50, 7, 4))  # another sample
    assert not np.array_equal(a, cf.random_removal_set(1000, 50, 8, 3))  # another seed
    assert len(cf.random_removal_set(10, 10, 0, 0)) == 10 and len(cf.random_removal_set(10, 0, 0, 0)) == 0
    with pytest.raises(ValueError):
        cf.random_removal_set(10, 11, 0, 0)


def test_removal_mask_removes_exactly_the_indices():
    removed = np.array([7, 0, 3])
    keep = cf.removal_mask(9, removed)
    assert keep.dtype == bool and keep.sum() == 6
    assert np.flatnonzero(~keep).tolist() == [0, 3, 7]
    assert cf.removal_mask(4, np.array([], dtype=np.int64)).all()
    for bad in ([1, 1], [9], [-1]):
        with pytest.raises(ValueError):
            cf.removal_mask(9, np.array(bad))


def test_removal_for_reads_the_sample_row_or_draws_the_control(tmp_path):
    from diffattr.scores import write_scores

    rng = np.random.default_rng(1)
    n_train = 12
    tau = rng.integers(-2, 3, size=(5, n_train)).astype(np.float32)  # ties
    for sign, name in ((-1, "helps"), (+1, "loss")):
        path = tmp_path / f"{name}.zarr"
        write_scores(path, 5, n_train, lambda a, b: tau[a:b], 2, {"sign": sign})
        removed = cf.removal_for(path, n_train, 3, 4, seed=9)
        # ascending s·τ (most responsible first), ties by ascending index
        np.testing.assert_array_equal(removed, np.lexsort((np.arange(n_train), sign * tau[3].astype(np.float64)))[:4])
    control = cf.removal_for(None, n_train, 3, 4, seed=9)
    np.testing.assert_array_equal(control, np.sort(np.random.default_rng([9, 3, 4]).choice(n_train, 4, replace=False)))
    with pytest.raises(ValueError, match="training columns"):
        cf.removal_for(tmp_path / "helps.zarr", n_train + 1, 3, 4, 0)
    with pytest.raises(ValueError, match="outside"):
        cf.removal_for(tmp_path / "helps.zarr", n_train, 5, 4, 0)
    with pytest.raises(ValueError, match="needs a seed"):
        cf.removal_for(None, n_train, 3, 4)
    assert cf.parse_removed(cf.format_removed(removed)).tolist() == removed.tolist()
    assert cf.parse_removed(np.nan).tolist() == []


# ---------------------------------------------------------------------------------------- retraining


def test_train_without_passes_exactly_the_kept_images(monkeypatch, tmp_path):
    data = np.random.default_rng(2).standard_normal((30, 1, 8, 8)).astype(np.float32)
    cond = np.arange(30)
    removed = np.array([5, 0, 17, 29])
    captured = {}

    def fake_train(model, inputs, conditions, train_config, seed, checkpoints, log_table, resume_dir):
        captured.update(model=model, inputs=inputs, cond=conditions, train=train_config, seed=seed,
                        checkpoints=checkpoints)
        return pd.DataFrame()

    monkeypatch.setattr("diffattr.train.train", fake_train)
    cf.train_without("model", data, cond, removed, TRAIN, 11, str(tmp_path / "m.safetensors"),
                     str(tmp_path / "log.csv"), str(tmp_path / "resume"))
    np.testing.assert_array_equal(captured["inputs"], np.delete(data, removed, axis=0))
    np.testing.assert_array_equal(captured["cond"], np.delete(cond, removed))
    assert captured["seed"] == 11 and captured["checkpoints"] == [str(tmp_path / "m.safetensors")]
    assert captured["train"] == {**TRAIN, "checkpoint_fractions": [1.0]} and captured["model"] == "model"


def test_train_without_trains_the_same_model_as_training_on_the_kept_images(tmp_path):
    from conftest import train_ddpm
    from diffattr.data.store import to_model_range
    from diffattr.models.family import fresh_model

    data = np.random.default_rng(3).integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)
    removed = np.array([2, 3, 11])
    ckpt = tmp_path / "cf.safetensors"
    cf.train_without(fresh_model(PARAMS, 5), to_model_range(data), None, removed, PARAMS["train"], 5, str(ckpt),
                     str(tmp_path / "log.csv"), str(tmp_path / "resume"))
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["n_train"]) == 17 and json.loads(meta["seed"]) == 5 and json.loads(meta["step"]) == 4
    # the single final checkpoint equals the last of the recipe's checkpoints trained on the kept rows directly
    kept = data[[i for i in range(20) if i not in {2, 3, 11}]]
    direct = [str(tmp_path / "d2.safetensors"), str(tmp_path / "d4.safetensors")]
    train_ddpm(kept, TINY_UNET, SCHEDULER, TRAIN, 5, direct, str(tmp_path / "dlog.csv"), str(tmp_path / "dresume"))
    a, b = load_file(str(ckpt)), load_file(direct[1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_counterfactual_jobs_train_without_the_removal_set_and_evaluate_their_sample(digits_store, models, tmp_path):
    """The workflow's two job functions: train_counterfactual removes the row's top-k and records it;
    evaluate_runs evaluates each model on its own sample's stored image and seed."""
    from diffattr.data.store import read_images
    from diffattr.sample import generate_set
    from diffattr.scores import write_scores

    n_train = len(read_images(digits_store, "train"))
    tau = np.random.default_rng(10).normal(size=(6, n_train)).astype(np.float32)
    write_scores(tmp_path / "gen.zarr", 6, n_train, lambda a, b: tau[a:b], 6, {"sign": -1})
    runs = []
    for method, scores, sample in (("trak", str(tmp_path / "gen.zarr"), 4), (cf.RANDOM_CONTROL, None, 1)):
        run = {"method": method, "sample": sample, "k": 7, "model_seed": 2} | ({} if scores else {"seed": 3})
        model, removed = str(tmp_path / f"{method}.safetensors"), str(tmp_path / f"{method}.csv")
        got = cf.train_counterfactual(digits_store, scores, PARAMS, run, model, removed, str(tmp_path / f"{method}_log.csv"),
                                      str(tmp_path / f"resume_{method}"))
        expected = np.argsort(-tau[sample], kind="stable")[:7] if scores else cf.random_removal_set(n_train, 7, 3, sample)
        np.testing.assert_array_equal(got, expected)
        table = pd.read_csv(removed)
        assert table[["method", "sample", "k", "n_train"]].values.tolist() == [[method, sample, 7, n_train]]
        assert cf.parse_removed(table["removed"].item()).tolist() == expected.tolist()
        with safe_open(model, framework="pt") as f:
            assert json.loads(f.metadata()["n_train"]) == n_train - 7 and json.loads(f.metadata()["seed"]) == 2
        runs.append((model, removed))

    params = {**PARAMS, "embedding": {"encoder": "ddpm", "layer": "mid", "batch_size": 2}}
    generate_set(models[0], params, str(tmp_path / "generated.zarr"), str(tmp_path / "generated.csv"))
    out = cf.evaluate_runs(models[0], runs, str(tmp_path / "generated.zarr"), str(tmp_path / "generated.csv"), params)
    assert out[["method", "sample", "k", "seed"]].values.tolist() == [["trak", 4, 7, 4], [cf.RANDOM_CONTROL, 1, 7, 1]]
    stored = read_images(str(tmp_path / "generated.zarr"), "gen")
    encoder = EmbeddingConfig(encoder="ddpm", path=models[0], layer="mid", batch_size=2)
    for row, (model, _) in zip(out.itertuples(), runs):
        direct = cf.evaluate_counterfactual(models[0], model, np.array([row.seed]), stored[row.sample : row.sample + 1],
                                            PARAMS, encoder)
        for name, values in direct.items():
            assert getattr(row, name) == pytest.approx(float(values[0]), rel=1e-12)


# -------------------------------------------------------------------------------------- regenerating


def test_regenerate_reproduces_ddim_from_identical_noise(models):
    model = load_unet(models[0], TINY_UNET)
    seeds = image_seeds(0, 5)
    images = cf.regenerate(Model(model, PARAMS), PARAMS, seeds)
    np.testing.assert_array_equal(images, ddim_trajectory(model, SCHEDULER, seeds, 5, 0.0, 2, record=False)[0])
    np.testing.assert_allclose(images, hand_ddim(model, seeds, 5), atol=2e-5)
    # one image does not depend on the other seeds of its batch (bit for bit at a fixed batch size) ...
    swapped = cf.regenerate(Model(model, PARAMS), PARAMS, seeds[[1, 4, 3, 0]])  # batches {1, 4}, {3, 0} instead of {0, 1}, {2, 3}
    np.testing.assert_array_equal(swapped[[0, 2]], images[[1, 3]])
    # ... nor, up to float rounding of batched convolutions, on the batch size
    alone = cf.regenerate(Model(model, PARAMS), {**PARAMS, "generate": {**PARAMS["generate"], "batch_size": 1}}, seeds[[1, 3]])
    np.testing.assert_allclose(alone, images[[1, 3]], atol=1e-4)
    # another model from the same noise gives another image
    other = cf.regenerate(Model(load_unet(models[1], TINY_UNET), PARAMS), PARAMS, seeds)
    assert np.abs(other - images).max() > 1e-2


# ------------------------------------------------------------------------------------------- metrics


def test_image_change_is_the_flattened_l2_norm():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(-1, 1, size=(6, 3, 4, 4)).astype(np.float32), rng.uniform(-1, 1, size=(6, 3, 4, 4)).astype(np.float32)
    expected = np.array([np.linalg.norm((a[i].astype(np.float64) - b[i]).ravel()) for i in range(6)])
    np.testing.assert_allclose(cf.image_change(a, b), expected, rtol=1e-12)
    assert (cf.image_change(a, a) == 0).all()
    # a one-level 8-bit change of every value of a C·H·W image is sqrt(C·H·W)·(2/255) on [−1, 1]
    np.testing.assert_allclose(cf.image_change(a[:1], a[:1] + 2 / 255), np.sqrt(48) * 2 / 255, rtol=1e-5)
    with pytest.raises(ValueError):
        cf.image_change(a, b[:, :2])


def test_embedding_cosine_is_the_hand_formula():
    rng = np.random.default_rng(5)
    e, f = rng.normal(size=(7, 9)), rng.normal(size=(7, 9))
    expected = [sum(x * y for x, y in zip(e[i], f[i])) / (sum(x * x for x in e[i]) ** 0.5 * sum(y * y for y in f[i]) ** 0.5)
                for i in range(7)]
    np.testing.assert_allclose(cf.embedding_cosine(e, f), expected, rtol=1e-12)
    np.testing.assert_allclose(cf.embedding_cosine(e, 3 * e), 1.0, rtol=1e-12)
    np.testing.assert_allclose(cf.embedding_cosine(e, -e), -1.0, rtol=1e-12)


def test_mean_loss_difference_is_the_hand_l_simple_difference(models):
    from diffattr.models.ddpm import alphas_cumprod

    a, b = load_unet(models[0], TINY_UNET), load_unet(models[1], TINY_UNET)
    images = np.random.default_rng(6).uniform(-1, 1, size=(5, 1, 8, 8)).astype(np.float32)
    pairs = np.array([[0, 10], [1, 500], [0, 999]])
    abar = alphas_cumprod(SCHEDULER)
    same = cf.mean_losses(a, images, "gen", pairs, abar, 2) - cf.mean_losses(a, images, "gen", pairs, abar, 2)
    assert same.shape == (5,) and (same == 0).all()
    delta = cf.mean_losses(b, images, "gen", pairs, abar, 2) - cf.mean_losses(a, images, "gen", pairs, abar, 2)
    expected = hand_l_simple(b, images, "gen", pairs) - hand_l_simple(a, images, "gen", pairs)
    assert np.abs(expected).min() > 1e-3  # the two models really differ
    np.testing.assert_allclose(delta, expected, rtol=1e-4, atol=1e-6)


def test_evaluate_counterfactual_against_independent_pieces(models):
    a_path, b_path = models
    a, b = load_unet(a_path, TINY_UNET), load_unet(b_path, TINY_UNET)
    seeds = image_seeds(0, 6)[[1, 4, 5]]
    stored = np.clip(np.rint((ddim_trajectory(a, SCHEDULER, seeds, 5, 0.0, 4, record=False)[0] + 1) * 127.5), 0, 255)
    stored = stored.astype(np.uint8).transpose(0, 2, 3, 1)  # as the generated store holds them
    encoder = EmbeddingConfig(encoder="ddpm", path=a_path, layer="mid", batch_size=2)

    same = cf.evaluate_counterfactual(a_path, a_path, seeds, stored, PARAMS, encoder)
    assert (same["pixel_l2"] == 0).all() and (same["loss_change"] == 0).all()
    np.testing.assert_allclose(same["embedding_cosine"], 1.0, atol=1e-12)

    out = cf.evaluate_counterfactual(a_path, b_path, seeds, stored, PARAMS, encoder)
    original = stored.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1.0
    regenerated = hand_quantize(ddim_trajectory(b, SCHEDULER, seeds, 5, 0.0, 1, record=False)[0])
    np.testing.assert_allclose(out["pixel_l2"], np.sqrt(((original - regenerated) ** 2).sum(axis=(1, 2, 3))), rtol=1e-6)
    assert (out["pixel_l2"] > 0).all()
    e_orig = embed(original.astype(np.float32), encoder, unet_config=TINY_UNET, scheduler_config=SCHEDULER)
    e_regen = embed(regenerated.astype(np.float32), encoder, unet_config=TINY_UNET, scheduler_config=SCHEDULER)
    cos = (e_orig * e_regen).sum(1) / (np.linalg.norm(e_orig, axis=1) * np.linalg.norm(e_regen, axis=1))
    np.testing.assert_allclose(out["embedding_cosine"], cos, rtol=1e-6)
    pairs = np.array([(s, t) for s in (0, 1) for t in (0, 250, 500, 750)])  # ground_truth: 4 uniform t × 2 seeds
    x = original.astype(np.float32)
    expected = hand_l_simple(b, x, "gen", pairs) - hand_l_simple(a, x, "gen", pairs)
    np.testing.assert_allclose(out["loss_change"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["loss_change"], out["loss_retrained"] - out["loss_original"], rtol=1e-12)

    assert np.isnan(cf.evaluate_counterfactual(a_path, b_path, seeds, stored, PARAMS, None)["embedding_cosine"]).all()
    with pytest.raises(ValueError, match="does not regenerate"):  # samples made by another model
        cf.evaluate_counterfactual(b_path, a_path, seeds, stored, PARAMS, encoder)


# --------------------------------------------------------------------------------------------- tables


def test_summary_table_matches_pandas_groupby(tmp_path):
    rng = np.random.default_rng(7)
    rows = [{"method": m, "k": k, "sample": s, "pixel_l2": rng.gamma(2.0), "embedding_cosine": rng.uniform(0.5, 1),
             "loss_change": rng.normal()} for m in ("trak", cf.RANDOM_CONTROL, "dtrak") for k in (10, 5) for s in range(7)]
    results = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
    table = cf.summary_table(results)
    # random first, then the methods in order of first appearance, k ascending
    first = [m for m in dict.fromkeys(results["method"]) if m != cf.RANDOM_CONTROL]
    assert list(zip(table["method"], table["k"])) == [(m, k) for m in [cf.RANDOM_CONTROL, *first] for k in (5, 10)]
    expected = results.groupby(["method", "k"])[["pixel_l2", "embedding_cosine", "loss_change"]].agg(["mean", "median"])
    for row in table.itertuples():
        assert row.n == 7
        for metric in ("pixel_l2", "embedding_cosine", "loss_change"):
            for stat in ("mean", "median"):
                assert getattr(row, f"{metric}_{stat}") == pytest.approx(expected.loc[(row.method, row.k), (metric, stat)],
                                                                         rel=1e-12)
    write_csv(table, tmp_path / "summary.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "summary.csv"), table, check_dtype=False)


def test_paired_vs_control_against_hand_differences():
    rng = np.random.default_rng(8)
    samples = [4, 9, 1, 7, 3]
    control = pd.DataFrame({"method": cf.RANDOM_CONTROL, "k": 5, "sample": samples, "pixel_l2": rng.gamma(2.0, size=5),
                            "embedding_cosine": rng.uniform(0.8, 1.0, size=5), "loss_change": rng.normal(size=5)})
    shift = np.array([0.5, -0.1, 0.7, 0.2, 0.3])
    method = control.assign(method="das", pixel_l2=control["pixel_l2"] + shift,
                            embedding_cosine=control["embedding_cosine"] - shift / 10, loss_change=control["loss_change"] + 1.0)
    method = method.iloc[[3, 0, 4, 1, 2]]  # rows in another order: pairing is by sample, not position
    unpaired = control.assign(method="trak", k=50)  # no control at k = 50: left out
    out = cf.paired_vs_control(pd.concat([control, method, unpaired]), resamples=200, confidence=0.9, seed=0)
    assert out[["method", "k", "n"]].values.tolist() == [["das", 5, 5]]
    row = out.iloc[0]
    assert row["pixel_l2_diff"] == pytest.approx(shift.mean(), rel=1e-12)
    assert row["pixel_l2_wins"] == pytest.approx(0.8) and row["embedding_cosine_wins"] == pytest.approx(0.8)
    assert row["embedding_cosine_diff"] == pytest.approx(-shift.mean() / 10, rel=1e-9)
    # a constant difference has a zero-width interval; a varying one's interval lies within its extremes
    assert row["loss_change_ci_low"] == pytest.approx(1.0) and row["loss_change_ci_high"] == pytest.approx(1.0)
    assert shift.min() <= row["pixel_l2_ci_low"] < shift.mean() < row["pixel_l2_ci_high"] <= shift.max()


def test_gather_writes_results_summary_and_markdown(tmp_path):
    rng = np.random.default_rng(9)
    paths = []
    for method in (cf.RANDOM_CONTROL, "das"):
        part = pd.DataFrame({"method": method, "sample": [2, 0, 1], "k": 3, "seed": [2, 0, 1],
                             "pixel_l2": rng.gamma(2.0, size=3) + (method == "das"),
                             "embedding_cosine": rng.uniform(0.5, 1, size=3), "loss_original": 0.1,
                             "loss_retrained": 0.2, "loss_change": rng.normal(size=3)})
        paths.append(str(tmp_path / f"{method}.csv"))
        part.to_csv(paths[-1], index=False)
    results = cf.gather(paths[::-1], str(tmp_path / "cf.csv"), str(tmp_path / "summary.csv"), str(tmp_path / "cf.md"),
                        100, 0.95, 0)
    back = pd.read_csv(tmp_path / "cf.csv")
    assert len(back) == 6 and back[["method", "sample"]].values.tolist() == [
        ["das", 0], ["das", 1], ["das", 2], [cf.RANDOM_CONTROL, 0], [cf.RANDOM_CONTROL, 1], [cf.RANDOM_CONTROL, 2]]
    pd.testing.assert_frame_equal(back, results, check_dtype=False)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["method"].tolist() == [cf.RANDOM_CONTROL, "das"]
    das = results[results["method"] == "das"].set_index("sample")
    ctl = results[results["method"] == cf.RANDOM_CONTROL].set_index("sample")
    assert summary["pixel_l2_diff"].iloc[1] == pytest.approx((das["pixel_l2"] - ctl["pixel_l2"]).mean())
    assert np.isnan(summary["pixel_l2_diff"].iloc[0])
    md = (tmp_path / "cf.md").read_text()
    mean, median = das["pixel_l2"].mean(), das["pixel_l2"].median()
    assert f"| das | 3 | 3 | {mean:.3f} ({median:.3f}) |" in md and "Paired with random_removal" in md
