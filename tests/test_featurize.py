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
