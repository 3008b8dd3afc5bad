"""Noise and timesteps are pure functions of (seed, split, sample id, t)."""

import numpy as np

from diffattr.noise import gaussian_noise, sample_timesteps, timestep_set


def test_noise_does_not_depend_on_batch_composition():
    ts = np.array([0, 100, 900])
    full = gaussian_noise(7, "train", [0, 1, 2, 3], ts, (1, 4, 4))
    part = gaussian_noise(7, "train", [2], ts[[2]], (1, 4, 4))
    np.testing.assert_array_equal(full[2, 2], part[0, 0])
    assert not np.array_equal(full[0, 0], gaussian_noise(7, "val", [0], ts, (1, 4, 4))[0, 0])
    assert abs(full.std() - 1) < 0.3


def test_timestep_sets_follow_dtrak():
    np.testing.assert_array_equal(timestep_set("uniform", 10, 1000), np.arange(0, 1000, 100))
    np.testing.assert_array_equal(timestep_set("cumulative", 4, 1000), [0, 1, 2, 3])
    r = sample_timesteps("random", 5, 1000, 0, "train", [3, 4])
    np.testing.assert_array_equal(r[0], sample_timesteps("random", 5, 1000, 0, "train", [3])[0])
    assert r.shape == (2, 5) and r.min() >= 0 and r.max() < 1000
