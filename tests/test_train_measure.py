"""Training is a pure function of (data, config, seed); resuming gives the same weights; the ground
truth is bit-identical across runs on CPU."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SCHEDULER, TINY_UNET, train_ddpm
from diffattr.data.store import read_images, to_model_range
from diffattr.ground_truth import GroundTruthConfig, gather, read_ground_truth, split_half_reliability
from diffattr.measure import measure_losses, measure_model
from diffattr.models.ddpm import alphas_cumprod, load_unet
from diffattr.train import batch_rows, training_draws

TRAIN = {"steps": 12, "batch_size": 16, "lr": 2e-3, "checkpoint_fractions": [0.5, 1.0], "resume_every": 4, "log_every": 4}


def run_training(images, out: Path, **overrides):
    cfg = {**TRAIN, **overrides}
    ckpts = [str(out / "step6.safetensors"), str(out / "step12.safetensors")]
    train_ddpm(images, TINY_UNET, SCHEDULER, cfg, 0, ckpts, str(out / "log.csv"), str(out / "resume"))
    return [load_file(p) for p in ckpts]


def initial_weights() -> dict[str, torch.Tensor]:
    """The untrained DDPM that run_training starts from (seed 0), as a checkpoint-like dict."""
    from diffattr.models.family import fresh_model

    network = fresh_model({"unet": TINY_UNET, "scheduler": SCHEDULER}, 0).network
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_batches_are_pure_functions_of_seed_and_step():
    assert np.array_equal(batch_rows(10, 4, 0, 3), batch_rows(10, 4, 0, 3))
    # every epoch visits each sample once
    stream = np.concatenate([batch_rows(10, 5, 1, s) for s in range(4)])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    d = training_draws(10, 4, 0, 2, 1000, (1, 8, 8))
    assert d.noise.shape == (4, 1, 8, 8) and d.timesteps.max() < 1000


def test_training_is_deterministic_and_resume_is_exact(digits_store, tmp_path):
    images = read_images(digits_store, "train")[:64]
    straight = run_training(images, tmp_path / "a")
    again = run_training(images, tmp_path / "b")
    for x, y in zip(straight, again):
        assert_same_weights(x, y)
    assert not (tmp_path / "a" / "resume").exists()

    # Interrupt after step 8 (a state was saved at step 8), then rerun: it resumes, same result.
    out = tmp_path / "c"
    calls = {"n": 0, "die_at": 10}
    original = torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise KeyboardInterrupt("killed mid-training")
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = dying_step
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(images, out)
        assert (out / "resume" / "state.safetensors").exists() and not (out / "step12.safetensors").exists()
        calls.update(n=0, die_at=None)
        resumed = run_training(images, out)
    finally:
        torch.optim.AdamW.step = original
    assert calls["n"] == 4  # steps 9–12 only: it resumed from step 8
    # the log rows before the resume point came back with the state: the same table, byte for byte
    assert (out / "log.csv").read_bytes() == (tmp_path / "a" / "log.csv").read_bytes()
    assert [line.split(",")[0] for line in (out / "log.csv").read_text().splitlines()] == ["step", "4", "8", "12"]
    for x, y in zip(straight, resumed):
        assert_same_weights(x, y)
    # the checkpoints too: the same bytes (weights and a header in canonical order), not just equal tensors
    for name in ("step6.safetensors", "step12.safetensors"):
        assert (out / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


def test_ground_truth_is_bit_identical_across_two_runs(digits_store, tmp_path):
    images = read_images(digits_store, "train")[:48]
    gt = {"timesteps": 5, "noise_seeds": [0, 1], "batch_size": 7}
    params = {"unet": TINY_UNET, "scheduler": SCHEDULER, "ground_truth": gt}
    results, weights = [], []
    for run in ("x", "y"):
        weights.append(run_training(images, tmp_path / run))
        path = tmp_path / run / f"gt{run}.zarr"
        measure_model(str(tmp_path / run / "step12.safetensors"), {"val": digits_store}, params, str(path))
        gathered = tmp_path / run / "pool.zarr"
        gather({(0, 0): str(path)}, ["val"], str(gathered))
        results.append(read_ground_truth(gathered, "val"))
    initial = initial_weights()
    for checkpoint in weights[0]:  # training moved every weight away from its seeded initialisation
        assert checkpoint.keys() == initial.keys()
        assert [k for k in initial if torch.equal(checkpoint[k], initial[k])] == []
    assert not torch.equal(weights[0][0]["conv_in.weight"], weights[0][1]["conv_in.weight"])  # step 6 ≠ step 12
    for x, y in zip(*weights):  # and the two runs trained the same weights, bit for bit
        assert_same_weights(x, y)
    assert results[0].shape == (1, 30)
    assert np.array_equal(results[0], results[1])


def test_measured_loss_matches_a_direct_computation(digits_store, tmp_path):
    """The per-sample L_Simple equals mean((ε_θ(x_t, t) − ε)²) computed by hand; batching changes it
    only at float rounding level (convolution kernels differ by batch size)."""
    run_training(read_images(digits_store, "train")[:32], tmp_path)
    model = load_unet(tmp_path / "step12.safetensors", TINY_UNET)
    x = to_model_range(read_images(digits_store, "val")[:5])
    abar = alphas_cumprod(SCHEDULER)
    pairs = GroundTruthConfig(timesteps=2, noise_seeds=(3,)).pairs(1000)
    a = measure_losses(model, x, "val", pairs, abar, batch_size=2)
    b = measure_losses(model, x, "val", pairs, abar, batch_size=5)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    from diffattr.noise import gaussian_noise

    seed, t = pairs[1]
    eps = torch.from_numpy(gaussian_noise(int(seed), "val", [4], [t], (1, 8, 8))[0])
    x4 = torch.from_numpy(x[4:5])
    xt = abar[t].sqrt() * x4 + (1 - abar[t]).sqrt() * eps
    with torch.no_grad():
        direct = ((model(xt, torch.tensor([t])).sample - eps) ** 2).mean().item()
    assert a[1, 4] == pytest.approx(direct, rel=1e-5)


def test_split_half_reliability_uses_seeds_when_there_are_two():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(1, 12, 1, 20))
    losses = signal + 0.1 * rng.normal(size=(2, 12, 4, 20))
    value, how = split_half_reliability(losses)
    assert how == "training seeds" and value > 0.9
    value, how = split_half_reliability(losses[:1])
    assert how.startswith("(noise seed") and value > 0.9


def test_a_measurement_part_measures_only_models_without_a_matching_measurement(digits_store, tmp_path):
    """One measure_outputs job per part of a pool (issue 17 item 2): its first run measures every
    model; a re-run after the pool grew measures only the new one and leaves the others' stores
    untouched (same inode and mtime); a changed checkpoint or a damaged store is measured again; every
    store equals a model-by-model :func:`measure_losses` (bit for bit on CPU)."""
    import os
    import shutil

    from diffattr.ground_truth import read_measurement
    from diffattr.measure import measure_part
    from diffattr.models.family import fresh_model, save_model

    params = {"unet": TINY_UNET, "scheduler": SCHEDULER, "ground_truth": {"timesteps": 3, "noise_seeds": [0], "batch_size": 16}}
    ckpts = {}
    for key in [(0, 0), (1, 0), (2, 0)]:
        ckpts[key] = str(tmp_path / f"m{key[0]}.safetensors")
        save_model(fresh_model(params, seed=key[0]), ckpts[key], {"step": 0})
    outs = {key: str(tmp_path / "part0" / str(key[0]) / "seed0.zarr") for key in ckpts}
    stores = {"val": digits_store}
    two = [(0, 0), (1, 0)]
    assert measure_part({k: ckpts[k] for k in two}, outs, stores, params) == two

    def stamp(key):
        st = os.stat(Path(outs[key]) / "zarr.json")
        return st.st_ino, st.st_mtime_ns

    before = {k: stamp(k) for k in two}
    assert measure_part(ckpts, outs, stores, params) == [(2, 0)]  # the pool grew by one model
    assert {k: stamp(k) for k in two} == before
    assert measure_part(ckpts, outs, stores, params) == []  # nothing changed: nothing measured

    x = to_model_range(read_images(digits_store, "val"))
    abar = alphas_cumprod(SCHEDULER)
    pairs = GroundTruthConfig(timesteps=3, noise_seeds=(0,)).pairs(1000)
    for key, ckpt in ckpts.items():
        direct = measure_losses(load_unet(ckpt, TINY_UNET), x, "val", pairs, abar, batch_size=16)
        assert np.array_equal(read_measurement(outs[key], "val"), direct), key

    shutil.copy(ckpts[(2, 0)], ckpts[(0, 0)])  # model 0 retrained (here: to model 2's weights)
    chunk = next(p for p in (Path(outs[(1, 0)]) / "val" / "losses").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-3])  # model 1's store damaged
    assert measure_part(ckpts, outs, stores, params) == [(0, 0), (1, 0)]
    assert np.array_equal(read_measurement(outs[(0, 0)], "val"), read_measurement(outs[(2, 0)], "val"))
    assert measure_part(ckpts, outs, stores, {**params, "ground_truth": {**params["ground_truth"], "timesteps": 2}}) == list(ckpts)
