"""Per-sample gradients (torch.func) against autograd one sample at a time; features are independent
of batch size and sharding; non-finite gradients are named."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import SCHEDULER, TINY_UNET
from diffattr.featurize import FeatureSpec, NonFiniteGradientError, featurize, per_sample_gradients
from diffattr.models.ddpm import build_scheduler, build_unet
from diffattr.outputs import OUTPUT_FUNCTIONS, elbo_weight, output_function


class TinyDenoiser(torch.nn.Module):
    """ε_θ(x_t, t) = W·vec(x_t) + b + c·t/1000: linear, so everything is easy to check."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = torch.nn.Linear(d, d)
        self.time = torch.nn.Parameter(torch.randn(d) * 0.1)

    def forward(self, x, t):
        flat = x.reshape(x.shape[0], -1)
        return SimpleNamespace(sample=(self.lin(flat) + self.time * t[:, None] / 1000).reshape(x.shape))


@pytest.mark.parametrize("output", OUTPUT_FUNCTIONS)
def test_per_sample_gradients_equal_autograd_one_sample_at_a_time(output):
    torch.manual_seed(0)
    model = TinyDenoiser(8)
    sched = build_scheduler(SCHEDULER)
    abar, betas = sched.alphas_cumprod.float(), sched.betas.float()
    x0 = torch.randn(5, 2, 2, 2)
    ts = torch.randint(0, 1000, (5, 3))
    eps = torch.randn(5, 3, 2, 2, 2)
    batched = per_sample_gradients(model, x0, ts, eps, output, abar, betas)
    f = output_function(output)
    for i in range(5):
        xt = abar[ts[i]].sqrt().view(-1, 1, 1, 1) * x0[i] + (1 - abar[ts[i]]).sqrt().view(-1, 1, 1, 1) * eps[i]
        pred = model(xt, ts[i]).sample
        weight = elbo_weight(ts[i], betas, abar)
        value = f(pred, eps[i], weight).mean()
        grads = torch.autograd.grad(value, list(model.parameters()))
        torch.testing.assert_close(batched[i], torch.cat([g.reshape(-1) for g in grads]), rtol=1e-5, atol=1e-7)


def features(model, images, ids, spec):
    return featurize(model, images, ids, "train", spec, build_scheduler(SCHEDULER))


def test_features_do_not_depend_on_batch_size_or_sharding():
    torch.manual_seed(1)
    model = build_unet(TINY_UNET)
    images = np.random.default_rng(0).uniform(-1, 1, (12, 1, 8, 8)).astype(np.float32)
    ids = np.arange(12)
    spec = FeatureSpec.from_dict({"output": "square", "timesteps": 3, "batch_size": 5,
                                  "projection": {"type": "gaussian", "dim": 32, "seed": 4}})
    one_shard = features(model, images, ids, spec)
    other_batch = features(model, images, ids, FeatureSpec.from_dict({**spec.__dict__, "projection": spec.projection.__dict__, "batch_size": 12}))
    four_shards = np.concatenate([features(model, images[a:a + 3], ids[a:a + 3], spec) for a in range(0, 12, 3)])
    np.testing.assert_allclose(other_batch, one_shard, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(four_shards, one_shard, rtol=1e-4, atol=1e-5)
    # a sample's feature depends on its id (its noise), not on its position
    shifted = features(model, images[:3], ids[:3] + 100, spec)
    assert not np.allclose(shifted, one_shard[:3])


def test_nan_gradient_is_named():
    torch.manual_seed(2)
    model = build_unet(TINY_UNET)
    with torch.no_grad():
        model.conv_out.bias.fill_(float("nan"))
    images = np.zeros((3, 1, 8, 8), dtype=np.float32)
    spec = FeatureSpec.from_dict({"output": "loss", "timesteps": 2, "projection": {"type": "gaussian", "dim": 8, "seed": 0}})
    with pytest.raises(NonFiniteGradientError, match="the gradient of train sample 7 is not finite"):
        features(model, images, np.array([7, 8, 9]), spec)


def test_per_timestep_normalisation_averages_unit_gradients_of_each_draw():
    """DAS (§2.13): (1/D) Σ_d ∇F_d/‖∇F_d‖, against autograd one draw at a time."""
    torch.manual_seed(1)
    model = TinyDenoiser(8)
    sched = build_scheduler(SCHEDULER)
    abar, betas = sched.alphas_cumprod.float(), sched.betas.float()
    x0, ts, eps = torch.randn(3, 2, 2, 2), torch.randint(0, 1000, (3, 4)), torch.randn(3, 4, 2, 2, 2)
    batched = per_sample_gradients(model, x0, ts, eps, "mean", abar, betas, normalize=True)
    for i in range(3):
        units = []
        for d in range(4):
            t = ts[i, d : d + 1]
            xt = abar[t].sqrt().view(-1, 1, 1, 1) * x0[i : i + 1] + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * eps[i, d : d + 1]
            grads = torch.autograd.grad(model(xt, t).sample.mean(), list(model.parameters()))
            g = torch.cat([x.reshape(-1) for x in grads])
            units.append(g / g.norm())
        torch.testing.assert_close(batched[i], torch.stack(units).mean(0), rtol=1e-5, atol=1e-7)


def test_trained_timesteps_are_the_training_record_and_drive_train_features_only():
    """Diffusion-TracIn (§2.5): replayed t_z^c equals the draws training made; train features use
    it (one draw), attributed samples the uniform set."""
    from diffattr.noise import gaussian_noise
    from diffattr.train import trained_timesteps, training_draws

    last = np.full(40, -1)
    for step in range(12):
        draws = training_draws(40, 8, 3, step, 1000, (1, 8, 8))
        last[draws.rows] = draws.timesteps
    np.testing.assert_array_equal(trained_timesteps(40, 8, 3, 12, 1000), last)

    torch.manual_seed(3)
    model = build_unet(TINY_UNET)
    images = np.random.default_rng(1).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    ids = np.arange(10, 14)
    spec = FeatureSpec.from_dict({"output": "loss", "timestep_strategy": "trained", "timesteps": 2,
                                  "projection": {"type": "gaussian", "dim": None, "seed": 0}})
    sched = build_scheduler(SCHEDULER)
    ts = last[ids][:, None]
    got = featurize(model, images, ids, "train", spec, sched, timesteps=ts)
    expected = per_sample_gradients(model, torch.from_numpy(images), torch.from_numpy(ts),
                                    torch.from_numpy(gaussian_noise(0, "train", ids, ts, (1, 8, 8))), "loss",
                                    sched.alphas_cumprod.float(), sched.betas.float())
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-7)
    uniform = FeatureSpec.from_dict({**spec.__dict__, "projection": spec.projection.__dict__, "timestep_strategy": "uniform"})
    np.testing.assert_array_equal(featurize(model, images, ids, "val", spec, sched),
                                  featurize(model, images, ids, "val", uniform, sched))


def test_journey_features_are_autograd_gradients_of_the_renoised_trajectory():
    """Journey-TRAK (§2.12): the feature at step s is ∇θ L_Simple(√ᾱ_t x̂₀^(s) + √(1−ᾱ_t) ε, t_s), one
    fresh ε per (sample, t_s); the query feature is their mean over steps. Checked against plain
    autograd on each (sample, step), one at a time."""
    from diffattr.featurize import featurize_trajectory
    from diffattr.noise import gaussian_noise
    from diffattr.outputs import l_simple

    torch.manual_seed(5)
    model = build_unet(TINY_UNET).eval()
    trajectory = np.random.default_rng(2).uniform(-1, 1, (3, 4, 1, 8, 8)).astype(np.float32)
    step_t = np.array([980, 620, 300, 20])
    ids = np.array([7, 8, 9])
    spec = FeatureSpec.from_dict({"output": "loss", "batch_size": 5,
                                  "projection": {"type": "gaussian", "dim": None, "seed": 0}})
    sched = build_scheduler(SCHEDULER)
    mean, per_step = featurize_trajectory(model, trajectory, step_t, ids, spec, sched)
    abar = sched.alphas_cumprod.double()
    for i, sample in enumerate(ids):
        for s, t in enumerate(step_t):
            eps = torch.from_numpy(gaussian_noise(0, "journey", [sample], np.array([[t]]), (1, 8, 8))[:, 0])
            x_t = (abar[t].sqrt() * torch.from_numpy(trajectory[i, s : s + 1]) + (1 - abar[t]).sqrt() * eps).float()
            loss = l_simple(model(x_t, torch.tensor([int(t)])).sample, eps)[0]
            expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
            np.testing.assert_allclose(per_step[i, s], expected.numpy(), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(mean, per_step.mean(axis=1), rtol=1e-6)
