"""Pretraining of the tiny base text-to-image pipeline (the stand-in for Stable Diffusion's pretraining)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SCHEDULER
from diffattr.data import ImageSet
from diffattr.data.digits import load_digits_pools
from diffattr.data.store import to_model_range, write_image_store
from diffattr.models.ddpm import alphas_cumprod
from diffattr.models.text_to_image import (
    UNK,
    TextToImageConfig,
    build_components,
    captions,
    encode_images,
    encode_prompts,
    latent_loss,
    load_components,
)
from test_text_to_image import TINY_TEXT_ENCODER, TINY_UNET, TINY_VAE
from diffattr.pretrain import (
    PretrainConfig,
    pretrain_base,
    pretrain_job,
    train_unet,
    train_vae,
    vae_pool,
)

MODEL = {"unet": TINY_UNET, "text_encoder": TINY_TEXT_ENCODER, "vae": TINY_VAE, "max_length": 8}
CFG = TextToImageConfig.from_dict(MODEL)
WORDS = captions(["ukiyo_e", "post_impressionism"], CFG.caption_template)  # the later fine-tuning captions
ABAR = alphas_cumprod(SCHEDULER)
N = 300


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    """The first N of scikit-learn's digits, scaled to 0..255 uint8 (N, 8, 8, 1)."""
    return load_digits_pools()["all"].take(np.arange(N))


def base_captions(data: ImageSet) -> list[str]:
    return captions([data.class_names[i] for i in data.labels], PretrainConfig().caption_template)


def reconstruction_mse(vae: torch.nn.Module, x: torch.Tensor) -> float:
    """Mean over pixels of (D(mode of q(z|x)) − x)²."""
    with torch.no_grad():
        return torch.nn.functional.mse_loss(vae.decode(vae.encode(x).latent_dist.mode()).sample, x).item()


@pytest.fixture(scope="module")
def trained_vae(digits):
    """(components at init, the same components after 40 VAE steps, model-range images)."""
    x = torch.from_numpy(to_model_range(digits.images))
    init = build_components(CFG, WORDS + base_captions(digits), 0)
    comps = build_components(CFG, WORDS + base_captions(digits), 0)
    losses = train_vae(comps.vae, x, PretrainConfig(vae_steps=40, batch_size=64))
    return init, comps, x, losses


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_config_defaults_and_unknown_key():
    cfg = PretrainConfig.from_dict({})
    assert (cfg.vae_steps, cfg.unet_steps, cfg.batch_size, cfg.lr, cfg.kl_weight) == (400, 800, 128, 1e-3, 1e-4)
    assert cfg.caption_template == "a digit {label}" and cfg.invert_augment and cfg.seed == 0
    assert PretrainConfig.from_dict({"vae_steps": 3, "seed": 2}) == PretrainConfig(vae_steps=3, seed=2)
    with pytest.raises(ValueError, match=r"unknown pretrain settings \['vae_step'\]"):
        PretrainConfig.from_dict({"vae_step": 3})


def test_vae_pool_adds_inverted_copies():
    x = torch.tensor([[[[-1.0, 0.2]]]])
    assert torch.equal(vae_pool(x, False), x)
    assert torch.equal(vae_pool(x, True), torch.tensor([[[[-1.0, 0.2]]], [[[1.0, -0.2]]]]))
    u8 = np.array([[[[0], [51]]]], dtype=np.uint8)  # 255 − x in uint8 is −x in model range
    assert torch.allclose(torch.from_numpy(to_model_range(255 - u8)), -torch.from_numpy(to_model_range(u8)))


def test_vae_learns_to_reconstruct(trained_vae):
    init, comps, x, losses = trained_vae
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert not comps.vae.training
    for images in (x, -x):  # the base images and (invert_augment) their inverted copies
        before, after = reconstruction_mse(init.vae, images), reconstruction_mse(comps.vae, images)
        assert after < 0.6 * before, (before, after)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_vae_training_is_seeded(digits):
    x = torch.from_numpy(to_model_range(digits.images[:64]))
    runs = []
    for seed in (0, 0, 1):
        vae = build_components(CFG, WORDS, 0).vae  # same init: only the draws' seed differs
        runs.append((vae, train_vae(vae, x, PretrainConfig(vae_steps=4, batch_size=16, seed=seed))))
    assert_same_state(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert runs[0][1] != runs[2][1]  # the seed changes the batches and the reparameterisation noise
    assert not torch.equal(runs[0][0].encoder.conv_in.weight, runs[2][0].encoder.conv_in.weight)


def test_unet_learns_l_simple(trained_vae, digits):
    _, comps, x, _ = trained_vae
    latents = encode_images(comps.vae, x)
    assert latents.shape == (N, 4, 4, 4)
    text = encode_prompts(comps, base_captions(digits))
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, len(ABAR), (N,), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    unet = copy.deepcopy(comps.unet)
    with torch.no_grad():
        before = latent_loss(unet, latents, text, t, noise, ABAR).mean().item()
    losses = train_unet(unet, latents, text, ABAR, PretrainConfig(unet_steps=40, batch_size=64))
    with torch.no_grad():
        after = latent_loss(unet, latents, text, t, noise, ABAR).mean().item()
    assert len(losses) == 40 and all(np.isfinite(losses)) and not unet.training
    assert after < 0.8 * before, (before, after)
    # every UNet weight trains, not only attention
    assert not torch.equal(unet.conv_in.weight, comps.unet.conv_in.weight)
    assert not torch.equal(unet.conv_out.weight, comps.unet.conv_out.weight)


def test_pretrain_base_writes_the_trained_pipeline(digits, tmp_path):
    images, labels = digits.images[:96], digits.labels[:96]
    settings = {"vae_steps": 6, "unet_steps": 5, "batch_size": 16, "log_every": 4, "seed": 3}
    table = pretrain_base(images, labels, digits.class_names, MODEL, SCHEDULER, settings, WORDS,
                          str(tmp_path / "pipe"), str(tmp_path / "log.csv"))
    loaded = load_components(tmp_path / "pipe")

    # the same training by hand: built under pretrain.seed, VAE then UNet on its latents
    cfg = PretrainConfig.from_dict(settings)
    names = captions([digits.class_names[i] for i in labels], cfg.caption_template)
    comps = build_components(CFG, WORDS + names, cfg.seed)
    init_text = copy.deepcopy(comps.text_encoder)
    x = torch.from_numpy(to_model_range(images))
    vae_losses = train_vae(comps.vae, x, cfg)
    unet_losses = train_unet(comps.unet, encode_images(comps.vae, x), encode_prompts(comps, names), ABAR, cfg)
    assert_same_state(loaded.unet, comps.unet)
    assert_same_state(loaded.vae, comps.vae)
    assert_same_state(loaded.text_encoder, init_text)  # frozen at its init
    fresh = build_components(CFG, WORDS + names, cfg.seed)
    assert not torch.equal(loaded.unet.conv_in.weight, fresh.unet.conv_in.weight)  # it did train

    vocab = loaded.tokenizer.get_vocab()  # covers the fine-tuning words and the base captions
    assert {"ukiyo_e", "post_impressionism", "painting", "digit", "0", "9"} <= set(vocab)
    assert all(vocab[UNK] not in ids for ids in loaded.tokenizer(WORDS + names).input_ids)

    written = pd.read_csv(tmp_path / "log.csv")
    assert list(written.columns) == ["stage", "step", "loss"]
    assert written["stage"].tolist() == ["vae", "vae", "unet", "unet"]
    assert written["step"].tolist() == [4, 6, 4, 5]
    expected = [np.mean(vae_losses[:4]), np.mean(vae_losses[4:]), np.mean(unet_losses[:4]), unet_losses[4]]
    assert np.allclose(written["loss"], expected, rtol=1e-6)
    pd.testing.assert_frame_equal(written, table)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_pretrain_job_reads_the_base_split(digits, tmp_path):
    store = str(tmp_path / "ds.zarr")
    write_image_store(store, {"base": digits.take(np.arange(32)), "train": digits.take(np.arange(32, 40))})
    params = {"text_to_image": MODEL, "scheduler": SCHEDULER, "words": WORDS,
              "pretrain": {"vae_steps": 2, "unet_steps": 2, "batch_size": 8}}
    table = pretrain_job(store, params, str(tmp_path / "pipe"), str(tmp_path / "log.csv"))
    assert table["stage"].tolist() == ["vae", "unet"] and table["step"].tolist() == [2, 2]
    assert "digit" in load_components(tmp_path / "pipe").tokenizer.get_vocab()

    no_base = str(tmp_path / "nobase.zarr")
    write_image_store(no_base, {"train": digits.take(np.arange(8))})
    with pytest.raises(KeyError, match="no split 'base'"):
        pretrain_job(no_base, params, str(tmp_path / "pipe2"), str(tmp_path / "log2.csv"))
    assert not (tmp_path / "pipe2").exists()


def test_a_loaded_pipeline_is_refused(digits, tmp_path):
    with pytest.raises(ValueError, match="already pretrained"):
        pretrain_base(digits.images, digits.labels, digits.class_names, {**MODEL, "pipeline_path": str(tmp_path)},
                      SCHEDULER, {}, WORDS, str(tmp_path / "pipe"), str(tmp_path / "log.csv"))
    assert not (tmp_path / "pipe").exists() and not (tmp_path / "log.csv").exists()
