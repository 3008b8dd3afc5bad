"""The text_to_image family behind the model interface (diffattr.models.family): LoRA training through
the one training loop, LoRA-only featurization, ground truth in latent space with the caption,
prompted generation and unlearning — each checked against a direct computation with the components."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from conftest import SCHEDULER
from test_text_to_image import TINY_LORA, TINY_TEXT_ENCODER, TINY_UNET, TINY_VAE
from diffattr.data import ImageSet
from diffattr.data.store import read_images, read_labels, to_model_range, write_image_store
from diffattr.featurize import per_sample_gradients
from diffattr.measure import measure_losses
from diffattr.models.ddpm import alphas_cumprod, build_scheduler
from diffattr.models.family import fresh_model, load_model, split_captions
from diffattr.models.text_to_image import (
    TextToImageConfig,
    build_components,
    captions,
    count_lora_parameters,
    encode_images,
    encode_prompts,
    latent_loss,
    lora_gradient,
    lora_parameters,
    save_components,
)
from diffattr.train import train

TEMPLATE = "an inverted digit {label}"
MODEL = {"unet": TINY_UNET, "text_encoder": TINY_TEXT_ENCODER, "vae": TINY_VAE, "lora": TINY_LORA, "max_length": 8,
         "caption_template": TEMPLATE}
TRAIN = {"steps": 6, "batch_size": 8, "lr": 1e-2, "checkpoint_fractions": [0.5, 1.0], "resume_every": 3,
         "log_every": 3}
ABAR = alphas_cumprod(SCHEDULER)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny base pipeline, model params pointing at it, and a store of 24 inverted digits."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("family")
    cfg = TextToImageConfig.from_dict(MODEL)
    words = captions([str(c) for c in range(10)], TEMPLATE) + ["a digit 3"]
    save_components(build_components(cfg, words, 0), root / "base")
    bunch = load_digits()
    images = (255 - np.rint(bunch.images[:24] * 255 / 16)).astype(np.uint8)[..., None]
    labels = bunch.target[:24].astype(np.int64)
    names = [str(c) for c in range(10)]
    store = str(root / "data.zarr")
    write_image_store(store, {"train": ImageSet(images, labels, [f"d{i}" for i in range(24)], names),
                              "val": ImageSet(images[:4], labels[:4], ["v"] * 4, names, ["a digit 3"] * 4)})
    params = {"family": "text_to_image", "scheduler": SCHEDULER, "text_to_image": MODEL, "base": str(root / "base")}
    return params, store, root


def test_captions_come_from_the_template_or_the_stored_column(setup):
    params, store, _ = setup
    labels = read_labels(store, "train").tolist()
    assert split_captions(store, "train", params) == [f"an inverted digit {v}" for v in labels]
    assert split_captions(store, "val", params) == ["a digit 3"] * 4


def test_conditions_index_a_growing_caption_table(setup):
    params, _, _ = setup
    model = fresh_model(params, 0)
    first = model.condition(["an inverted digit 1", "an inverted digit 2", "an inverted digit 1"])
    second = model.condition(["a digit 3", "an inverted digit 2"])
    assert first.tolist() == [0, 1, 0] and second.tolist() == [2, 1]
    direct = encode_prompts(model.components, ["an inverted digit 1", "an inverted digit 2", "a digit 3"])
    torch.testing.assert_close(model.network.context, direct)


def test_inputs_are_vae_latents_with_caption_conditions(setup):
    params, store, _ = setup
    model = fresh_model(params, 0)
    inputs, cond = model.inputs(store, "train", slice(5, 9))
    expected = encode_images(model.components.vae, torch.from_numpy(to_model_range(read_images(store, "train")[5:9])))
    torch.testing.assert_close(torch.from_numpy(inputs), expected)
    assert inputs.shape == (4, 4, 4, 4) and cond.shape == (4,)


def test_lora_training_changes_only_the_lora_weights_and_saves_only_them(setup, tmp_path):
    params, store, _ = setup
    model = fresh_model(params, 3)
    before = {n: p.detach().clone() for n, p in model.network.named_parameters()}
    inputs, cond = model.inputs(store, "train")
    paths = [str(tmp_path / "s3.safetensors"), str(tmp_path / "s6.safetensors")]
    train(model, inputs, cond, TRAIN, 3, paths, str(tmp_path / "log.csv"), str(tmp_path / "resume"))
    changed = {n for n, p in model.network.named_parameters() if not torch.equal(p, before[n])}
    lora = {f"unet.{n}" for n in lora_parameters(model.network.unet)}
    assert changed and changed <= lora and any(".lora_B." in n for n in changed)
    with safe_open(paths[-1], framework="pt") as f:
        assert set(f.keys()) == set(lora_parameters(model.network.unet))
    loaded = load_model(paths[-1], params)
    for name, param in lora_parameters(loaded.network.unet).items():
        torch.testing.assert_close(param, lora_parameters(model.network.unet)[name], rtol=0, atol=0)


def test_a_resumed_lora_training_is_bit_identical(setup, tmp_path, monkeypatch):
    import diffattr.train as training

    params, store, _ = setup

    def run(out):
        model = fresh_model(params, 1)
        inputs, cond = model.inputs(store, "train")
        paths = [str(out / "m3.safetensors"), str(out / "m6.safetensors")]
        train(model, inputs, cond, TRAIN, 1, paths, str(out / "log.csv"), str(out / "resume"))
        return paths[-1]

    straight = run(tmp_path / "a")
    real_step = training._step

    def killed_at_step_4(model, opt, data, cond, cfg, seed, step, abar):
        if step == 4:
            raise KeyboardInterrupt
        return real_step(model, opt, data, cond, cfg, seed, step, abar)

    monkeypatch.setattr(training, "_step", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    assert (tmp_path / "b" / "resume" / "state.safetensors").exists()
    monkeypatch.setattr(training, "_step", real_step)
    resumed = run(tmp_path / "b")
    with safe_open(straight, framework="pt") as f, safe_open(resumed, framework="pt") as g:
        assert set(f.keys()) == set(g.keys())
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())


def test_featurization_differentiates_the_lora_weights_only(setup):
    params, store, _ = setup
    model = fresh_model(params, 0)
    with torch.no_grad():  # move B off zero so that the A-gradients are not trivially zero
        for name, p in lora_parameters(model.network.unet).items():
            if ".lora_B." in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    inputs, cond = model.inputs(store, "train", slice(0, 5))
    rng = np.random.default_rng(0)
    t = torch.from_numpy(rng.integers(0, 1000, size=(5, 1)))
    eps = torch.from_numpy(rng.standard_normal((5, 1, 4, 4, 4), dtype=np.float32))
    abar = ABAR
    got = per_sample_gradients(model.network.eval(), torch.from_numpy(inputs), t, eps, "loss", abar,
                               build_scheduler(SCHEDULER).betas, cond=torch.from_numpy(cond))
    states = model.network.context[torch.from_numpy(cond)]
    direct = lora_gradient(model.network.unet, torch.from_numpy(inputs), states, t[:, 0], eps[:, 0], abar)
    # lora_gradient's columns follow sorted names, featurization's the modules' order: reorder to compare
    lora = lora_parameters(model.network.unet)
    blocks = dict(zip(lora, torch.split(direct, [p.numel() for p in lora.values()], dim=1)))
    direct = torch.cat([blocks[n] for n, p in model.network.unet.named_parameters() if p.requires_grad], dim=1)
    assert got.shape == (5, count_lora_parameters(model.network.unet))
    torch.testing.assert_close(got, direct, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.network.parameters())


def test_ground_truth_losses_are_latent_l_simple_with_the_caption(setup):
    params, store, _ = setup
    model = fresh_model(params, 0)
    inputs, cond = model.inputs(store, "val")
    pairs = np.array([[0, 10], [1, 700]])
    got = measure_losses(model.network, inputs, "val", pairs, ABAR, 3, cond=cond)
    from diffattr.noise import gaussian_noise

    states = model.network.context[torch.from_numpy(cond)]
    for p, (seed, t) in enumerate(pairs):
        eps = torch.from_numpy(gaussian_noise(int(seed), "val", np.arange(4), np.asarray([t]), inputs.shape[1:])[:, 0])
        direct = latent_loss(model.network.unet, torch.from_numpy(inputs), states, torch.full((4,), int(t)), eps, ABAR)
        torch.testing.assert_close(torch.from_numpy(got[p]), direct.detach())


def test_generation_uses_each_images_prompt_and_decodes(setup, tmp_path):
    from diffattr.sample import ddim_trajectory, generate_set

    params, _, _ = setup
    model = fresh_model(params, 0)
    path = str(tmp_path / "lora.safetensors")
    from diffattr.models.family import save_model

    save_model(model, path, {})
    block = {"count": 4, "steps": 3, "seed": 0, "batch_size": 3, "prompts": ["an inverted digit 1", "a digit 3"]}
    store = str(tmp_path / "gen.zarr")
    images = generate_set(path, {**params, "generate": block}, store, str(tmp_path / "gen.csv"))
    assert images.shape == (4, 8, 8, 1)
    assert split_captions(store, "gen", params) == ["an inverted digit 1"] * 2 + ["a digit 3"] * 2
    # the same DDIM run, one prompt for all: the second block changes, the first does not
    loaded = load_model(path, params)
    same = loaded.condition(["an inverted digit 1"] * 4)
    x, _, _ = ddim_trajectory(loaded.network, SCHEDULER, np.arange(4), 3, 0.0, 4, record=False, cond=same,
                              to_images=loaded.to_images)
    from diffattr.data.store import to_uint8

    again = to_uint8(x)
    assert np.array_equal(again[:2], images[:2]) and not np.array_equal(again[2:], images[2:])


def test_unlearning_updates_only_the_selected_lora_weights(setup):
    from diffattr.methods.unlearning import UnlearningConfig, fisher_diagonal, unlearning_step

    params, store, _ = setup
    model = fresh_model(params, 0)
    inputs, cond = model.inputs(store, "train", slice(0, 8))
    cfg = UnlearningConfig(params=("attn2.to_k", "attn2.to_v"), micro_batches=2, query_copies=4, fisher_passes=1,
                           eta=1e-3)
    fisher = fisher_diagonal(model.network, inputs, cfg, ABAR, cond=cond)
    assert fisher and all("attn2.to_" in n and ".lora_" in n for n in fisher)
    after = unlearning_step(model.network, inputs[0], fisher, 8, cfg, ABAR, query_cond=int(cond[0]))
    moved = {n for n, p in after.named_parameters() if not torch.equal(p, dict(model.network.named_parameters())[n])}
    assert moved and moved <= set(fisher)


def test_the_unlearning_method_scores_a_text_to_image_model_through_the_registry(setup, tmp_path):
    """The registry's scorer on a LoRA checkpoint: one row per val sample, equal to the loss change
    of the training samples after that sample's unlearning step (computed here step by step)."""
    from diffattr.ground_truth import GroundTruthConfig
    from diffattr.methods.registry import score_method
    from diffattr.methods.unlearning import UnlearningConfig, fisher_diagonal, mean_losses, unlearning_step
    from diffattr.models.family import save_model
    from diffattr.scores import iter_score_blocks

    params, store, _ = setup
    path = str(tmp_path / "lora.safetensors")
    model = fresh_model(params, 2)
    with torch.no_grad():
        for name, p in lora_parameters(model.network.unet).items():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    save_model(model, path, {})
    knobs = {"params": ["attn2.to_k", "attn2.to_v"], "micro_batches": 2, "query_copies": 4, "fisher_passes": 1,
             "eta": 1e-2}
    truth = {"timesteps": 3, "noise_seeds": [0]}
    method = {"kind": "unlearning", **knobs, **params, "ground_truth": truth}
    score_method(method, {"checkpoint": path, "data": store}, "val", str(tmp_path / "scores.zarr"))
    scores = np.concatenate([block for _, block in iter_score_blocks(str(tmp_path / "scores.zarr"))])
    assert scores.shape == (4, 24) and np.isfinite(scores).all() and np.abs(scores).max() > 0

    loaded = load_model(path, params)
    train_x, train_c = loaded.inputs(store, "train")
    query_x, query_c = loaded.inputs(store, "val")
    cfg = UnlearningConfig.from_dict(knobs)
    pairs = GroundTruthConfig.from_dict(truth).pairs(1000)
    fisher = fisher_diagonal(loaded.network, train_x, cfg, ABAR, cond=train_c)
    before = mean_losses(loaded.network, train_x, pairs, ABAR, cfg, cond=train_c)
    after = unlearning_step(loaded.network, query_x[2], fisher, 24, cfg, ABAR, query_cond=int(query_c[2]))
    expected = mean_losses(after, train_x, pairs, ABAR, cfg, cond=train_c) - before
    np.testing.assert_allclose(scores[2], expected, rtol=1e-4, atol=1e-7)


def test_counterfactual_regenerates_from_the_prompt_and_measures_in_latent_space(setup, tmp_path):
    """§4.5 on a LoRA: the original regenerates its stored images from seed and prompt; a retrained
    LoRA equal to the original changes nothing; another one moves pixels and the latent L_Simple by
    exactly what a direct computation gives."""
    from diffattr.counterfactual import evaluate_runs
    from diffattr.models.family import save_model
    from diffattr.sample import generate_set

    params, _, _ = setup
    paths = []
    for seed in (0, 1):
        model = fresh_model(params, seed)
        with torch.no_grad():
            for name, p in lora_parameters(model.network.unet).items():
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(seed * 1000 + len(name)))
        paths.append(str(tmp_path / f"m{seed}.safetensors"))
        save_model(model, paths[-1], {})
    block = {"count": 2, "steps": 4, "seed": 0, "batch_size": 2, "prompts": ["an inverted digit 1", "a digit 3"]}
    gen, table = str(tmp_path / "gen.zarr"), str(tmp_path / "gen.csv")
    generate_set(paths[0], {**params, "generate": block}, gen, table)
    removed = tmp_path / "removed.csv"
    pd.DataFrame([{"method": "m", "sample": 1, "k": 3}]).to_csv(removed, index=False)
    run = {**params, "generate": block, "ground_truth": {"timesteps": 4, "noise_seeds": [0]}, "embedding": None}
    same, other = evaluate_runs(paths[0], [(paths[0], str(removed)), (paths[1], str(removed))], gen, table, run).itertuples()
    assert same.pixel_l2 == 0 and same.loss_change == 0
    assert other.pixel_l2 > 0 and other.loss_change != 0
    # the loss change by hand: both LoRAs on the stored image's latent with its prompt "a digit 3"
    from diffattr.models.ddpm import alphas_cumprod
    from diffattr.noise import gaussian_noise

    stored = read_images(gen, "gen")[1:2]
    pairs = np.array([[0, t] for t in (0, 250, 500, 750)])
    losses = []
    for path in paths:
        loaded = load_model(path, params)
        z = torch.from_numpy(loaded.to_inputs(stored))
        states = encode_prompts(loaded.components, ["a digit 3"])
        per_pair = [latent_loss(loaded.network.unet, z, states, torch.tensor([t]),
                                torch.from_numpy(gaussian_noise(int(s), "gen", np.arange(1), np.asarray([t]),
                                                                z.shape[1:])[:, 0]), alphas_cumprod(SCHEDULER))
                    for s, t in pairs]
        losses.append(float(torch.stack(per_pair).mean().detach()))
    assert other.loss_change == pytest.approx(losses[1] - losses[0], rel=1e-4, abs=1e-7)
