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
    vae_loss,
    vae_pool,
)
from diffattr.train import TrainConfig

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
def trained_vae(digits, tmp_path_factory):
    """(components at init, the same components after 40 VAE steps, model-range images, log rows)."""
    x = torch.from_numpy(to_model_range(digits.images))
    init = build_components(CFG, WORDS + base_captions(digits), 0)
    comps = build_components(CFG, WORDS + base_captions(digits), 0)
    rows = train_vae(comps.vae, x, PretrainConfig(vae_steps=40, batch_size=64, log_every=5),
                     tmp_path_factory.mktemp("vae"))
    return init, comps, x, rows


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_config_defaults_and_unknown_key():
    cfg = PretrainConfig.from_dict({})
    assert (cfg.vae_steps, cfg.unet_steps, cfg.batch_size, cfg.lr, cfg.kl_weight) == (400, 800, 128, 1e-3, 1e-4)
    assert cfg.caption_template == "a digit {label}" and cfg.invert_augment and cfg.seed == 0
    # AdamW as the train block has it (not torch's weight decay 0.01 and betas (0.9, 0.999))
    train = TrainConfig(steps=1, batch_size=1, lr=1.0)
    assert (cfg.weight_decay, cfg.adam_betas, cfg.adam_eps) == (train.weight_decay, train.adam_betas, train.adam_eps)
    assert (cfg.weight_decay, cfg.adam_betas, cfg.adam_eps, cfg.resume_every) == (1e-6, (0.95, 0.999), 1e-8, 100)
    assert PretrainConfig.from_dict({"adam_betas": [0.5, 0.6]}).adam_betas == (0.5, 0.6)
    with pytest.raises(ValueError, match="resume_every >= 1"):
        PretrainConfig.from_dict({"resume_every": 0})
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
    init, comps, x, rows = trained_vae
    losses = [r["loss"] for r in rows]
    assert [r["step"] for r in rows] == list(range(5, 41, 5)) and all(np.isfinite(losses))
    assert {r["lr"] for r in rows} == {1e-3}  # the VAE's learning rate is constant
    assert not comps.vae.training
    for images in (x, -x):  # the base images and (invert_augment) their inverted copies
        before, after = reconstruction_mse(init.vae, images), reconstruction_mse(comps.vae, images)
        assert after < 0.6 * before, (before, after)
    assert losses[-1] < 0.6 * losses[0]


def test_vae_training_is_seeded(digits, tmp_path):
    x = torch.from_numpy(to_model_range(digits.images[:64]))
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        vae = build_components(CFG, WORDS, 0).vae  # same init: only the draws' seed differs
        runs.append((vae, train_vae(vae, x, PretrainConfig(vae_steps=4, batch_size=16, seed=seed, log_every=1),
                                    tmp_path / str(i))))
    assert_same_state(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert runs[0][1] != runs[2][1]  # the seed changes the batches and the reparameterisation noise
    assert not torch.equal(runs[0][0].encoder.conv_in.weight, runs[2][0].encoder.conv_in.weight)


def test_unet_learns_l_simple(trained_vae, digits, tmp_path):
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
    rows = train_unet(unet, latents, text, ABAR, PretrainConfig(unet_steps=40, batch_size=64, log_every=10), tmp_path)
    with torch.no_grad():
        after = latent_loss(unet, latents, text, t, noise, ABAR).mean().item()
    assert [r["step"] for r in rows] == [10, 20, 30, 40] and all(np.isfinite([r["loss"] for r in rows]))
    assert not unet.training
    # the cosine schedule with 10 % warm-up peaking at lr, evaluated before the window's last step
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * 0.5 * (1 + np.cos(np.pi * (s - 1 - 4) / 36))
                                                     for s in (10, 20, 30, 40)], rel=1e-12)
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
    vae_rows = train_vae(comps.vae, x, cfg, tmp_path / "by_hand")
    unet_rows = train_unet(comps.unet, encode_images(comps.vae, x), encode_prompts(comps, names), ABAR, cfg,
                           tmp_path / "by_hand")
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
    assert np.allclose(written["loss"], [r["loss"] for r in vae_rows + unet_rows], rtol=1e-12)
    pd.testing.assert_frame_equal(written, table)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries
    assert not (tmp_path / "pipe.resume").exists()  # the finished job's resume states are gone


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


def adamw_by_hand(vae: torch.nn.Module, pool: torch.Tensor, cfg: PretrainConfig, **adamw) -> None:
    """The VAE stage written out with torch's AdamW given ``adamw``: step s's rows from
    default_rng([seed, 0, s]), its ξ from a generator seeded by SeedSequence([seed, 2, s])."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, **adamw)
    vae.train()
    for s in range(cfg.vae_steps):
        rows = np.random.default_rng([cfg.seed, 0, s]).choice(len(pool), size=cfg.batch_size, replace=False)
        seed = int(np.random.SeedSequence([cfg.seed, 2, s]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
        loss, _ = vae_loss(vae, pool[torch.from_numpy(rows)], cfg.kl_weight, torch.Generator().manual_seed(seed))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_the_optimiser_settings_come_from_the_pretrain_block(digits, tmp_path):
    x = torch.from_numpy(to_model_range(digits.images[:32]))
    block = {"vae_steps": 3, "batch_size": 16, "lr": 0.01, "weight_decay": 0.3, "adam_betas": [0.5, 0.7],
             "adam_eps": 1e-3, "invert_augment": False}
    cfg = PretrainConfig.from_dict(block)
    engine = build_components(CFG, WORDS, 0).vae
    train_vae(engine, x, cfg, tmp_path)
    configured, torch_defaults = build_components(CFG, WORDS, 0).vae, build_components(CFG, WORDS, 0).vae
    adamw_by_hand(configured, x, cfg, weight_decay=0.3, betas=(0.5, 0.7), eps=1e-3)
    adamw_by_hand(torch_defaults, x, cfg)
    assert_same_state(engine, configured)
    assert not torch.equal(engine.encoder.conv_in.weight, torch_defaults.encoder.conv_in.weight)


KILL = {"vae_steps": 6, "unet_steps": 5, "batch_size": 16, "log_every": 4, "seed": 3, "resume_every": 2}


@pytest.mark.parametrize("die_at, rerun_steps", [(4, 4 + 5), (9, 3)])  # killed in the VAE stage; in the UNet's
def test_a_killed_pretraining_resumes_to_the_same_bytes(digits, tmp_path, monkeypatch, die_at, rerun_steps):
    images, labels = digits.images[:64], digits.labels[:64]

    def run(out):
        return pretrain_base(images, labels, digits.class_names, MODEL, SCHEDULER, KILL, WORDS, str(out / "pipe"),
                             str(out / "log.csv"))

    run(tmp_path / "a")
    original, calls = torch.optim.AdamW.step, {"n": 0, "die_at": die_at}

    def counted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise KeyboardInterrupt("killed mid-pretraining")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted_step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    assert not (tmp_path / "b" / "pipe").exists() and not (tmp_path / "b" / "log.csv").exists()
    stage = "vae" if die_at <= KILL["vae_steps"] else "unet"
    assert (tmp_path / "b" / "pipe.resume" / f"{stage}.safetensors").exists()
    calls.update(n=0, die_at=None)
    run(tmp_path / "b")
    assert calls["n"] == rerun_steps  # only the steps after the last saved state ran again
    assert not (tmp_path / "b" / "pipe.resume").exists()
    assert (tmp_path / "b" / "log.csv").read_bytes() == (tmp_path / "a" / "log.csv").read_bytes()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "pipe").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b" / "pipe").rglob("*")
                                     if p.is_file())
    for name in files:
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
