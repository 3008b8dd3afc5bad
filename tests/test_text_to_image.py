"""Text-to-image LoRA components (docs/methods.md §3 "ArtBench SD-LoRA"), on tiny random models."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from safetensors import safe_open

from conftest import SCHEDULER
from diffattr.models.ddpm import alphas_cumprod
from diffattr.models.text_to_image import (
    BOS,
    EOS,
    PAD,
    UNK,
    Components,
    TextToImageConfig,
    add_lora,
    build_components,
    build_tokenizer,
    captions,
    components,
    count_lora_parameters,
    decode_latents,
    encode_images,
    encode_prompts,
    latent_loss,
    load_components,
    load_lora,
    lora_gradient,
    lora_parameters,
    save_components,
    save_lora,
)

TINY_UNET = {
    "sample_size": 4,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 16,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}
TINY_TEXT_ENCODER = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_position_embeddings": 8,
}
TINY_VAE = {
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": 4,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "norm_num_groups": 4,
    "sample_size": 8,
}
TINY_LORA = {"rank": 2, "alpha": 4}
LABELS = ["ukiyo_e", "post_impressionism"]
CFG = TextToImageConfig.from_dict(
    {"unet": TINY_UNET, "text_encoder": TINY_TEXT_ENCODER, "vae": TINY_VAE, "lora": TINY_LORA, "max_length": 8}
)
WORDS = captions(LABELS, CFG.caption_template)
ABAR = alphas_cumprod(SCHEDULER)


def tiny(seed: int = 0) -> Components:
    return build_components(CFG, WORDS, seed)


def lora_unet(seed: int = 0, lora_seed: int = 1) -> torch.nn.Module:
    unet = tiny(seed).unet
    add_lora(unet, CFG.lora, lora_seed)
    return unet


def randomize_lora(unet: torch.nn.Module, seed: int) -> None:
    """Move every LoRA weight away from its init (B = 0 makes ∂ℓ/∂A vanish, which tests nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(unet).values():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def batch(n: int = 3, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, text states, timesteps, noise) for n samples."""
    g = torch.Generator().manual_seed(seed)
    comps = tiny()
    images = torch.rand((n, 1, 8, 8), generator=g) * 2 - 1
    latents = encode_images(comps.vae, images)
    text = encode_prompts(comps, captions([LABELS[i % 2] for i in range(n)]))
    t = torch.tensor([0, 500, 999, 250, 750][:n])
    noise = torch.randn(latents.shape, generator=g)
    return latents, text, t, noise


def unet_output(unet: torch.nn.Module, latents, text, t) -> torch.Tensor:
    with torch.no_grad():
        return unet(latents, t, encoder_hidden_states=text).sample


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_config_defaults_and_captions():
    cfg = TextToImageConfig.from_dict({})
    assert cfg.pipeline_path is None and cfg.caption_template == "a {label} painting"
    assert cfg.lora == {"rank": 128, "alpha": 128.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    assert CFG.lora["alpha"] == 4.0
    with pytest.raises(ValueError, match="unknown lora"):
        TextToImageConfig.from_dict({"lora": {"rnak": 4}})
    assert captions(["ukiyo e", "baroque"]) == ["a ukiyo e painting", "a baroque painting"]
    assert captions(["x"], "{label} art") == ["x art"]
    with pytest.raises(ValueError, match="needs"):
        build_components(TextToImageConfig(), WORDS, 0)


def test_tokenizer_is_word_level_and_padded():
    tok = build_tokenizer(WORDS, 8)
    ids = tok(["a ukiyo_e painting", "A Post_Impressionism painting", "a cubism painting"], padding="max_length",
              max_length=8, truncation=True).input_ids
    vocab = tok.get_vocab()
    assert set(vocab) == {PAD, BOS, EOS, UNK, "a", "painting", "ukiyo_e", "post_impressionism"}
    assert ids[0] == [vocab[BOS], vocab["a"], vocab["ukiyo_e"], vocab["painting"], vocab[EOS]] + [vocab[PAD]] * 3
    assert ids[1][2] == vocab["post_impressionism"]  # lower-cased
    assert ids[2][2] == vocab[UNK]
    long = tok(["a " * 20], padding="max_length", max_length=8, truncation=True).input_ids[0]
    assert len(long) == 8 and long[0] == vocab[BOS] and long[-1] == vocab[EOS]
    assert build_tokenizer(list(reversed(WORDS)), 8).get_vocab() == vocab  # order-independent


def test_build_save_load_round_trip(tmp_path):
    built = tiny(0)
    assert_same_state(built.unet, tiny(0).unet)  # seeded
    assert not torch.equal(built.unet.conv_in.weight, tiny(1).unet.conv_in.weight)
    save_components(built, tmp_path / "pipe")
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == ["text_encoder", "tokenizer", "unet", "vae"]
    assert list((tmp_path / "pipe" / "unet").glob("*.safetensors"))
    loaded = load_components(tmp_path / "pipe")
    via_config = components(TextToImageConfig(pipeline_path=str(tmp_path / "pipe")), [], 99)
    for other in (loaded, via_config):
        for name in ("unet", "text_encoder", "vae"):
            assert_same_state(getattr(built, name), getattr(other, name))
        prompts = captions(LABELS + ["cubism"])
        assert torch.equal(encode_prompts(built, prompts), encode_prompts(other, prompts))
    assert encode_prompts(loaded, prompts).shape == (3, 8, 16)

    with pytest.raises(FileNotFoundError, match="lacks the subfolders"):
        load_components(tmp_path / "nowhere")
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        load_components(tmp_path / "partial")
    add_lora(built.unet, CFG.lora, 0)
    with pytest.raises(ValueError, match="LoRA"):
        save_components(built, tmp_path / "refused")


def test_add_lora_trains_exactly_the_lora_weights():
    base = tiny().unet
    targets = CFG.lora["target_modules"]
    expected = 0
    for name, module in base.named_modules():  # independently of peft: r·(in + out) per targeted Linear
        if any(name == t or name.endswith("." + t) for t in targets):
            assert isinstance(module, torch.nn.Linear), name
            expected += CFG.lora["rank"] * (module.in_features + module.out_features)
    assert expected > 0
    unet = copy.deepcopy(base)
    add_lora(unet, CFG.lora, 1)
    params = lora_parameters(unet)
    assert list(params) == sorted(params)
    assert set(params) == {n for n, p in unet.named_parameters() if p.requires_grad}
    assert all("lora" in n for n in params)
    assert count_lora_parameters(unet) == expected
    assert sum(p.numel() for p in unet.parameters() if not p.requires_grad) == sum(p.numel() for p in base.parameters())

    only_kv = copy.deepcopy(base)
    add_lora(only_kv, {"rank": 1, "target_modules": ["attn2.to_k", "attn2.to_v"]}, 1)  # §2.17's choice
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in lora_parameters(only_kv))
    with pytest.raises(ValueError, match="nothing_here"):
        add_lora(copy.deepcopy(base), {"rank": 1, "target_modules": ["nothing_here"]}, 1)


def test_one_adamw_step_changes_only_lora_tensors():
    unet = lora_unet()
    latents, text, t, noise = batch()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-2, weight_decay=1e-2)  # all of them: freezing must hold
    latent_loss(unet, latents, text, t, noise, ABAR).mean().backward()
    opt.step()
    after = unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora" in k for k in changed)
    assert {k for k in before if "lora_B" in k} <= changed
    for name, p in unet.named_parameters():
        assert (p.grad is not None) == ("lora" in name), name


def test_lora_at_init_is_the_base_model_and_a_gradient_is_zero():
    base = tiny().unet
    unet = lora_unet()
    latents, text, t, noise = batch()
    params = lora_parameters(unet)
    for name, p in params.items():
        if "lora_B" in name:
            assert torch.count_nonzero(p) == 0, name  # peft's "gaussian" init still zeroes B
        else:
            assert "lora_A" in name, name
    a_values = torch.cat([p.reshape(-1) for n, p in params.items() if "lora_A" in n])
    assert abs(a_values.std().item() * CFG.lora["rank"] - 1) < 0.1  # A ~ N(0, 1/r²), thousands of draws
    assert torch.equal(unet_output(base, latents, text, t), unet_output(unet, latents, text, t))
    g = lora_gradient(unet, latents, text, t, noise, ABAR)
    offset = 0
    for name, p in params.items():
        block = g[:, offset : offset + p.numel()]
        assert (torch.count_nonzero(block) == 0) == ("lora_A" in name), name
        offset += p.numel()
    randomize_lora(unet, 0)
    assert not torch.allclose(unet_output(base, latents, text, t), unet_output(unet, latents, text, t))


def per_sample_autograd(unet: torch.nn.Module, latents, text, t, noise, abar) -> torch.Tensor:
    """Reference: a loop of torch.autograd.grad of each sample's loss, flattened in sorted-name order."""
    params = lora_parameters(unet)
    rows = []
    for i in range(len(latents)):
        loss = latent_loss(unet, latents[i : i + 1], text[i : i + 1], t[i : i + 1], noise[i : i + 1], abar)[0]
        rows.append(torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, list(params.values()))]))
    return torch.stack(rows)


def relative_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=1) / b.norm(dim=1)


def test_lora_gradient_equals_per_sample_autograd():
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = lora_unet()
    randomize_lora(unet, 3)
    latents, text, t, noise = batch(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = lora_gradient(unet, latents, text, t, noise, ABAR)
    assert not [w for w in caught if "batching rule" in str(w.message)]  # plain attention: no vmap fallback
    assert g.shape == (4, count_lora_parameters(unet)) and g.dtype == torch.float32
    assert all(p.grad is None for p in unet.parameters())  # nothing accumulated anywhere
    assert all(isinstance(proc, AttnProcessor2_0) for proc in unet.attn_processors.values())  # restored
    assert relative_errors(lora_gradient(unet, latents, text, t, noise, ABAR, chunk_size=1), g).max() < 1e-5

    # In float64 the vmapped gradient and the autograd loop agree to rounding ...
    u64 = copy.deepcopy(unet).double()
    args64 = (latents.double(), text.double(), t, noise.double(), ABAR.double())
    exact = per_sample_autograd(u64, *args64)
    assert exact.norm(dim=1).min() > 0
    assert relative_errors(lora_gradient(u64, *args64), exact).max() < 1e-10
    # ... and in float32 both are within 1e-5 / 1e-4 of it (the loop is the noisier one, ~2e-5 at t = 0).
    assert relative_errors(g.double(), exact).max() < 1e-5
    loop = per_sample_autograd(unet, latents, text, t, noise, ABAR)
    assert relative_errors(g, loop).max() < 1e-4
    assert all(p.grad is None for p in u64.parameters())


def test_save_load_lora_round_trip(tmp_path):
    trained = lora_unet(0, 1)
    randomize_lora(trained, 7)
    save_lora(trained, tmp_path / "lora.safetensors", {"step": 10, "labels": LABELS})
    with safe_open(str(tmp_path / "lora.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == list(lora_parameters(trained))
    fresh = lora_unet(0, 2)  # same base, another adapter init
    latents, text, t, _ = batch()
    assert not torch.equal(unet_output(fresh, latents, text, t), unet_output(trained, latents, text, t))
    assert load_lora(fresh, tmp_path / "lora.safetensors") == {"step": 10, "labels": LABELS}
    assert torch.equal(unet_output(fresh, latents, text, t), unet_output(trained, latents, text, t))
    assert_same_state(fresh, trained)

    other_rank = tiny().unet
    add_lora(other_rank, {"rank": 3}, 0)
    with pytest.raises(ValueError, match="other shapes"):
        load_lora(other_rank, tmp_path / "lora.safetensors")
    kv_only = tiny().unet
    add_lora(kv_only, {"rank": 2, "target_modules": ["to_k"]}, 0)
    with pytest.raises(ValueError, match="unexpected"):
        load_lora(kv_only, tmp_path / "lora.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="is truncated or corrupted"):
        load_lora(fresh, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="no LoRA"):
        save_lora(tiny().unet, tmp_path / "none.safetensors", {})


def test_encode_images_is_the_scaled_mode_and_deterministic():
    vae = tiny().vae
    images = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = encode_images(vae, images)
    assert z.shape == (3, 4, 4, 4) and not z.requires_grad
    assert torch.equal(z, encode_images(vae, images))
    with torch.no_grad():
        dist = vae.encode(images).latent_dist
    assert torch.equal(z, dist.mean * vae.config.scaling_factor)
    assert dist.std.min() > 0  # a sample would differ: the mode is a choice
    x = decode_latents(vae, z)
    assert x.shape == images.shape and x.min() >= -1 and x.max() <= 1


def test_latent_loss_matches_the_float64_formula():
    unet = lora_unet()
    randomize_lora(unet, 4)
    latents, text, t, noise = batch(3)
    loss = latent_loss(unet, latents, text, t, noise, ABAR)
    a = ABAR.double()[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * latents.double() + (1 - a).sqrt() * noise.double()
    pred = unet_output(unet, z_t.float(), text, t).double()
    expected = ((pred - noise.double()) ** 2).reshape(3, -1).mean(dim=1)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    assert not torch.allclose(loss, latent_loss(unet, latents, text, t, torch.flip(noise, [0]), ABAR))
