"""Encoded ensembles (docs/methods.md §2.18): balanced codes, complement-ensemble losses against brute force
and against the ground truth's own measurement, DDPM sampling against diffusers' scheduler, forward-mode
Jacobians against finite differences, and the registry scorer through real checkpoints and stores."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr
from diffusers import DDPMScheduler

from conftest import SCHEDULER, TINY_UNET
from diffattr.methods.registry import ScoreContext
from diffattr.data import ImageSet
from diffattr.data.store import to_model_range, write_image_store
from diffattr.ground_truth import GroundTruthConfig
from diffattr.measure import measure_losses
from diffattr.methods.encoded import (
    complement_losses,
    counterfactual_distances,
    counterfactual_sample,
    encoded_influence,
    encoded_method_scores,
    ensemble_jacobian,
    ensemble_sample,
    full_losses,
    linearised_counterfactual,
)
from diffattr.models.ddpm import alphas_cumprod, build_unet, save_weights
from diffattr.outputs import l_simple
from diffattr.subsets import balanced_codes

torch.set_num_threads(1)

MEMBERS = 4


def tiny_models(count: int, dtype: torch.dtype = torch.float32) -> list[torch.nn.Module]:
    models = []
    for m in range(count):
        torch.manual_seed(100 + m)
        models.append(build_unet(TINY_UNET).to(dtype).eval())
    return models


@pytest.fixture(scope="module")
def members() -> list[torch.nn.Module]:
    return tiny_models(MEMBERS)


@pytest.fixture(scope="module")
def members64() -> list[torch.nn.Module]:
    return tiny_models(MEMBERS, torch.float64)


def step_noise(steps: int, batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(steps + 1, batch, 1, 8, 8): slice k drawn by torch.Generator().manual_seed(k), as diffusers would."""
    return torch.stack([torch.randn((batch, 1, 8, 8), generator=torch.Generator().manual_seed(k), dtype=dtype)
                        for k in range(steps + 1)])


class MeanEnsemble(torch.nn.Module):
    """An ε model whose output is the plain mean of its members' outputs."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=torch.stack([m(x, t).sample for m in self.members]).mean(dim=0))


# ------------------------------------------------------------------------------------------ codes


def test_balanced_codes_are_distinct_balanced_and_seeded():
    every = balanced_codes(252, 10, seed=0)
    assert every.dtype == bool and every.shape == (252, 10)
    assert len(np.unique(every, axis=0)) == 252 and (every.sum(axis=1) == 5).all()
    assert (every.sum(axis=0) == 126).all()  # all C(10, 5) codes: each member holds C(9, 4) of them

    codes = balanced_codes(2000, 16, seed=3)
    assert len(np.unique(codes, axis=0)) == 2000 and (codes.sum(axis=1) == 8).all()
    assert np.abs(codes.sum(axis=0) - 1000).max() < 5 * math.sqrt(2000) / 2
    assert np.array_equal(codes, balanced_codes(2000, 16, seed=3))
    assert not np.array_equal(codes, balanced_codes(2000, 16, seed=4))


def test_balanced_codes_reject_odd_members_and_too_few_codes():
    with pytest.raises(ValueError, match="even number"):
        balanced_codes(10, 7, seed=0)
    with pytest.raises(ValueError, match="even number"):
        balanced_codes(1, 0, seed=0)
    with pytest.raises(ValueError, match="16 models give 12870 codes, fewer than the 20000"):
        balanced_codes(20000, 16, seed=0)


# ----------------------------------------------------------------------------------------- losses


def test_complement_and_full_losses_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    preds = torch.randn((6, 3, 20), generator=generator)
    eps = torch.randn((3, 20), generator=generator)
    codes = balanced_codes(15, 6, seed=1)
    expected = torch.stack([l_simple(preds[torch.from_numpy(~code)].double().mean(dim=0), eps.double())
                            for code in codes], dim=1)
    torch.testing.assert_close(complement_losses(preds, eps, codes), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(full_losses(preds, eps), l_simple(preds.double().mean(dim=0), eps.double()))


def brute_force_influence(models, images, split, pairs, abar, codes) -> np.ndarray:
    """τ column by column: the complement ensemble built explicitly and measured like the ground truth."""
    full = measure_losses(MeanEnsemble(models), images, split, pairs, abar, batch_size=len(images))
    columns = []
    for code in codes:
        complement = MeanEnsemble([m for m, used in zip(models, code) if not used])
        columns.append((full - measure_losses(complement, images, split, pairs, abar, len(images))).mean(axis=0))
    return np.stack(columns, axis=1)


def test_encoded_influence_equals_ground_truth_measurement_of_each_complement(members):
    images = np.random.default_rng(0).uniform(-1, 1, size=(3, 1, 8, 8)).astype(np.float32)
    codes = balanced_codes(6, MEMBERS, seed=0)
    pairs = GroundTruthConfig(timesteps=3, noise_seeds=(0, 1)).pairs(1000)
    abar = alphas_cumprod(SCHEDULER)
    scores = encoded_influence(members, images, "val", pairs, abar, codes, batch_size=2)
    assert scores.shape == (3, 6) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, brute_force_influence(members, images, "val", pairs, abar, codes), atol=2e-6)
    assert np.abs(scores).max() > 1e-3


# --------------------------------------------------------------------------------------- sampling


def diffusers_sample(model: torch.nn.Module, noise: torch.Tensor, steps: int) -> torch.Tensor:
    scheduler = DDPMScheduler(**SCHEDULER, variance_type="fixed_small", clip_sample=True)
    scheduler.set_timesteps(steps)
    x = noise[0]
    for k, t in enumerate(scheduler.timesteps, start=1):
        with torch.no_grad():
            pred = model(x, torch.full((len(x),), int(t))).sample
        x = scheduler.step(pred, int(t), x, generator=torch.Generator().manual_seed(k)).prev_sample
    return x


def test_one_hot_weights_sample_with_that_member_alone(members):
    noise = step_noise(20, batch=2)
    with torch.no_grad():
        sample = ensemble_sample(members, torch.tensor([0.0, 1.0, 0.0, 0.0]), noise, SCHEDULER, timesteps=20)
        alone = ensemble_sample(members[1:2], torch.ones(1), noise, SCHEDULER, timesteps=20)
    torch.testing.assert_close(sample, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(sample, diffusers_sample(members[1], noise, 20), rtol=0, atol=1e-4)


def test_all_step_sampling_is_diffusers_ddpm_step_loop(members):
    noise = step_noise(1000, batch=1)
    with torch.no_grad():
        sample = ensemble_sample(members[:1], torch.ones(1), noise, SCHEDULER)
    torch.testing.assert_close(sample, diffusers_sample(members[0], noise, 1000), rtol=0, atol=1e-4)


def test_ensemble_sample_rejects_noise_of_the_wrong_length(members):
    with pytest.raises(ValueError, match="21 slices but 10 sampling steps"):
        ensemble_sample(members, torch.full((MEMBERS,), 0.25), step_noise(20, 1), SCHEDULER, timesteps=10)


@pytest.fixture(scope="module")
def linearised(members64):
    noise = step_noise(8, batch=2, dtype=torch.float64)
    codes = balanced_codes(6, MEMBERS, seed=2)
    x0, jacobian = ensemble_jacobian(members64, noise, SCHEDULER, timesteps=8)
    return SimpleNamespace(noise=noise, codes=codes, x0=x0, jacobian=jacobian)


def test_forward_mode_jacobian_matches_central_differences(members64, linearised):
    w = torch.full((MEMBERS,), 1.0 / MEMBERS, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        x0 = ensemble_sample(members64, w, linearised.noise, SCHEDULER, timesteps=8)
        torch.testing.assert_close(linearised.x0, x0)
        for m in range(MEMBERS):
            step = h * torch.eye(MEMBERS, dtype=torch.float64)[m]
            plus = ensemble_sample(members64, w + step, linearised.noise, SCHEDULER, timesteps=8)
            minus = ensemble_sample(members64, w - step, linearised.noise, SCHEDULER, timesteps=8)
            torch.testing.assert_close(linearised.jacobian[m], (plus - minus) / (2 * h), rtol=1e-5, atol=1e-6)
    assert linearised.jacobian.abs().max() > 1e-2


def test_linearised_counterfactual_combines_jacobians_with_complement_weights(members64, linearised):
    x0, delta = linearised_counterfactual(members64, linearised.codes, linearised.noise, SCHEDULER, timesteps=8)
    torch.testing.assert_close(x0, linearised.x0)
    assert delta.shape == (6, 2, 1, 8, 8)
    for i, code in enumerate(linearised.codes):
        expected = sum(((2 / MEMBERS) * (not code[m]) - 1 / MEMBERS) * linearised.jacobian[m] for m in range(MEMBERS))
        torch.testing.assert_close(delta[i], expected)
    distances = counterfactual_distances(delta)
    assert distances.shape == (2, 6)
    np.testing.assert_allclose(distances[1, 4], np.sqrt((delta[4, 1].numpy() ** 2).sum()))


def test_counterfactual_sample_uses_only_members_without_the_point(members, linearised):
    code = linearised.codes[3]
    noise = linearised.noise.float()
    weights = torch.tensor([0.0 if used else 0.5 for used in code])
    with torch.no_grad():
        expected = ensemble_sample(members, weights, noise, SCHEDULER, timesteps=8)
        alone = ensemble_sample([m for m, used in zip(members, code) if not used], torch.full((2,), 0.5), noise,
                                SCHEDULER, timesteps=8)
    torch.testing.assert_close(counterfactual_sample(members, code, noise, SCHEDULER, timesteps=8), expected)
    torch.testing.assert_close(expected, alone, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------- scorer


@pytest.fixture(scope="module")
def scorer_inputs(members, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("encoded")
    rng = np.random.default_rng(5)

    def image_set(n: int) -> ImageSet:
        return ImageSet(rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8), np.zeros(n, dtype=np.int64),
                        ["test"] * n, ["digit"])

    write_image_store(root / "data.zarr", {"train": image_set(6), "val": image_set(3)})
    write_image_store(root / "gen.zarr", {"gen": image_set(2)})
    masks = balanced_codes(6, MEMBERS, seed=7).T
    group = zarr.open_group(str(root / "masks.zarr"), mode="w")
    group.create_array("masks", data=masks)
    inputs = {"data": str(root / "data.zarr"), "generated": str(root / "gen.zarr"), "masks": str(root / "masks.zarr"),
              "members": []}
    for m, model in enumerate(members):
        save_weights(model, root / f"member_{m}.safetensors", {"member": m})
        inputs["members"].append(str(root / f"member_{m}.safetensors"))
    return inputs


PARAMS = {"unet": TINY_UNET, "scheduler": SCHEDULER, "batch_size": 2,
          "ground_truth": {"timestep_strategy": "uniform", "timesteps": 2, "noise_seeds": [0], "batch_size": 8}}


@pytest.mark.parametrize("query_set", ["val", "gen"])
def test_scorer_equals_encoded_influence_of_the_stored_ensemble(members, scorer_inputs, query_set, monkeypatch):
    from diffattr.data.store import read_images
    from diffattr.subsets import read_pool

    monkeypatch.setenv("DIFFATTR_DEVICE", "cpu")
    blocks = encoded_method_scores(ScoreContext.from_params(PARAMS, scorer_inputs, query_set))
    store = scorer_inputs["generated" if query_set == "gen" else "data"]
    queries = to_model_range(read_images(store, query_set))
    pairs = GroundTruthConfig.from_dict(PARAMS["ground_truth"]).pairs(1000)
    expected = encoded_influence(members, queries, query_set, pairs, alphas_cumprod(SCHEDULER),
                                 read_pool(scorer_inputs["masks"]).T, 2)
    assert (blocks.n_queries, blocks.n_train) == (len(queries), 6) and blocks.attrs["members"] == MEMBERS
    np.testing.assert_allclose(blocks.block(0, len(queries)), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(blocks.block(1, 2), expected[1:2], rtol=1e-6, atol=1e-9)


def test_scorer_rejects_masks_that_are_not_a_balanced_design(scorer_inputs, tmp_path, monkeypatch):
    from diffattr.subsets import read_pool

    monkeypatch.setenv("DIFFATTR_DEVICE", "cpu")
    masks = read_pool(scorer_inputs["masks"]).copy()
    masks[0, 0] = not masks[0, 0]
    zarr.open_group(str(tmp_path / "bad.zarr"), mode="w").create_array("masks", data=masks)
    with pytest.raises(ValueError, match="not a balanced code design"):
        encoded_method_scores(ScoreContext.from_params(PARAMS, {**scorer_inputs, "masks": str(tmp_path / "bad.zarr")}, "val"))
