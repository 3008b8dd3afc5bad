"""DDIM generation and its recorded trajectory (docs/methods.md §3 "Generation", §2.12)."""

import numpy as np
import pytest
import torch

from diffattr.data import ImageSet
from diffattr.data.store import to_uint8, write_image_store
from diffattr.models.ddpm import build_unet, save_weights
from diffattr.sample import ddim_trajectory, image_seeds, read_trajectory, record_trajectory

UNET = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1,
        "norm_num_groups": 4, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}
SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}


def test_trajectory_x0_is_the_denoised_state_and_ends_at_the_sample():
    """x̂₀^(s) = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t clamped, recomputed by hand from the DDIM states; with η = 0
    the last step's x̂₀ is the generated image; recording does not change the images."""
    from diffusers import DDIMScheduler

    from diffattr.models.ddpm import build_scheduler
    from diffattr.sample import initial_noise

    torch.manual_seed(0)
    model = build_unet(UNET).eval()
    seeds = image_seeds(0, 3)
    images, trajectory, timesteps = ddim_trajectory(model, SCHEDULER, seeds, 5, 0.0, 2)
    assert trajectory.shape == (3, 5, 1, 8, 8) and list(timesteps) == [800, 600, 400, 200, 0]
    np.testing.assert_array_equal(images, ddim_trajectory(model, SCHEDULER, seeds, 5, 0.0, 2, record=False)[0])
    np.testing.assert_allclose(trajectory[:, -1], images, atol=1e-5)
    abar = build_scheduler(SCHEDULER).alphas_cumprod
    scheduler = DDIMScheduler.from_config(build_scheduler(SCHEDULER).config)
    scheduler.set_timesteps(5)
    x = torch.from_numpy(initial_noise(seeds, (1, 8, 8)))
    with torch.no_grad():
        for s, t in enumerate(timesteps):
            eps = model(x, torch.full((3,), int(t))).sample
            x0 = ((x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)
            np.testing.assert_allclose(trajectory[:, s], x0.numpy(), atol=1e-5)
            x = scheduler.step(eps, int(t), x).prev_sample


def test_recorded_trajectory_must_end_at_the_generated_store(tmp_path):
    torch.manual_seed(1)
    model = build_unet(UNET).eval()
    save_weights(model, tmp_path / "model.safetensors", {})
    params = {"unet": UNET, "scheduler": SCHEDULER, "generate": {"count": 4, "steps": 3, "seed": 0}}
    images = ddim_trajectory(model, SCHEDULER, image_seeds(0, 4), 3, 0.0, 4, record=False)[0]
    write_image_store(tmp_path / "gen.zarr", {"gen": ImageSet(to_uint8(images), np.full(4, -1), ["g"] * 4, [])})
    trajectory = record_trajectory(str(tmp_path / "model.safetensors"), params, str(tmp_path / "gen.zarr"),
                                   str(tmp_path / "trajectory.zarr"))
    stored, timesteps = read_trajectory(str(tmp_path / "trajectory.zarr"), 1, 3)
    np.testing.assert_array_equal(stored, trajectory[1:3])
    assert list(timesteps) == [666, 333, 0]
    other = {**params, "generate": {"count": 4, "steps": 3, "seed": 1}}
    with pytest.raises(ValueError, match="does not end at the images"):
        record_trajectory(str(tmp_path / "model.safetensors"), other, str(tmp_path / "gen.zarr"), str(tmp_path / "t2.zarr"))
