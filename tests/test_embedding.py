"""Embedding-similarity attribution (docs/methods.md §2.2, §2.16): CLIP preprocessing and embeddings agree
with independent computations, scores are dot / cosine of embeddings, missing weights fail clearly, the
DDPM-UNet encoder is deterministic with the chosen layer's width, and a training image's nearest
training image is itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from conftest import SCHEDULER, TINY_UNET
from diffattr.methods.registry import ScoreContext
from diffattr.methods.embedding import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    EmbeddingConfig,
    clip_preprocess,
    embed,
    embedding_method_scores,
    embedding_scores,
    layer_channels,
    similarity_matrix,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """The first 60 sklearn digits as (n, 1, 8, 8) float32 in [−1, 1], without exact duplicates."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:80].astype(np.float32) / 8.0 - 1.0
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    return images[np.sort(first)][:60, None].copy()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny randomly initialised CLIP vision tower with projection, saved as a local directory."""
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8,
                                           projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def unet_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from diffattr.models.ddpm import build_unet, save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("unet") / "unet.safetensors"
    save_weights(build_unet(TINY_UNET), path, {"note": "random init"})
    return str(path)


def pil_bicubic_preprocess(images: np.ndarray, size: int) -> torch.Tensor:
    """Reference CLIP preprocessing of square images: PIL float ('F') bicubic resize, clamp, normalise."""
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        channels = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
        for c in range(3):
            u = Image.fromarray(((channels[c] + 1.0) / 2.0).astype(np.float32), mode="F")
            resized = np.asarray(u.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
            out[i, c] = (np.clip(resized, 0.0, 1.0) - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c]
    return torch.from_numpy(out)


def test_clip_preprocessing_matches_hand_values_and_pil_bicubic(digits):
    # a constant image stays constant: ((v + 1)/2 − mean_c) / std_c per channel
    const = torch.full((1, 1, 8, 8), -1.0)
    pixels = clip_preprocess(const, 32)
    assert pixels.shape == (1, 3, 32, 32)
    for c, (m, s) in enumerate(zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)):
        assert torch.allclose(pixels[0, c], torch.tensor(-m / s), atol=1e-5)
    assert torch.allclose(clip_preprocess(torch.ones(1, 3, 4, 4), 8)[0, 0, 0, 0], torch.tensor((1 - 0.48145466) / 0.26862954))
    # bicubic up- and down-sampling agree with PIL's bicubic on real digits
    ours = clip_preprocess(torch.from_numpy(digits[:5]), 32)
    assert torch.allclose(ours, pil_bicubic_preprocess(digits[:5], 32), atol=1e-4)
    big = pil_bicubic_preprocess(digits[:3], 20).numpy()[:, :1] * OPENAI_CLIP_STD[0] + OPENAI_CLIP_MEAN[0]
    down = clip_preprocess(torch.from_numpy(big * 2 - 1), 8)
    assert torch.allclose(down, pil_bicubic_preprocess(big * 2 - 1, 8), atol=1e-4)
    # a non-square image: shorter side to S, then the centre crop
    wide = torch.zeros(1, 1, 4, 8)
    wide[..., 2:6] = 1.0
    assert clip_preprocess(wide, 4).shape == (1, 3, 4, 4)


def test_clip_embeddings_equal_the_model_on_independent_pixel_values(clip_dir, digits):
    cfg = EmbeddingConfig(encoder="clip", path=clip_dir, batch_size=3)
    ours = embed(digits[:7], cfg)
    model = transformers.CLIPVisionModelWithProjection.from_pretrained(clip_dir, use_safetensors=True, local_files_only=True).eval()
    with torch.no_grad():
        direct = model(pixel_values=pil_bicubic_preprocess(digits[:7], 32)).image_embeds.double().numpy()
    assert ours.shape == (7, 16) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, direct, atol=1e-4)
    # a different image_size interpolates the position embeddings and still gives d = projection_dim
    assert embed(digits[:2], EmbeddingConfig(encoder="clip", path=clip_dir, image_size=16)).shape == (2, 16)


def test_scores_are_dot_and_cosine_of_embeddings(clip_dir, digits):
    from sklearn.metrics.pairwise import cosine_similarity

    queries, train = digits[:4], digits[10:25]
    cfg = EmbeddingConfig(encoder="clip", path=clip_dir, similarity="cosine", batch_size=8)
    e_q, e_z = embed(queries, cfg), embed(train, cfg)
    cos = embedding_scores(queries, train, cfg)
    assert cos.shape == (4, 15)
    np.testing.assert_allclose(cos, cosine_similarity(e_q, e_z), atol=1e-10)
    dot = embedding_scores(queries, train, EmbeddingConfig(encoder="clip", path=clip_dir, similarity="dot"))
    np.testing.assert_allclose(dot, e_q @ e_z.T, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(similarity_matrix(np.eye(2), np.array([[3.0, 4.0]]), "cosine"), [[0.6], [0.8]])
    with pytest.raises(ValueError, match="similarity"):
        EmbeddingConfig(encoder="clip", path=clip_dir, similarity="l2")


def test_missing_weights_raise_one_clear_sentence(tmp_path, digits):
    missing = tmp_path / "no-such-clip"
    with pytest.raises(FileNotFoundError) as err:
        embed(digits[:1], EmbeddingConfig(encoder="clip", path=str(missing)))
    message = str(err.value)
    assert str(missing) in message and message.count(". ") == 0 and message.endswith(".")
    ckpt = tmp_path / "no-such.safetensors"
    with pytest.raises(FileNotFoundError, match="no-such.safetensors does not exist"):
        embed(digits[:1], EmbeddingConfig(encoder="ddpm", path=str(ckpt)), unet_config=TINY_UNET)


def test_ddpm_embeddings_are_deterministic_and_have_the_layer_width(unet_path, digits):
    from diffattr.models.ddpm import add_noise, alphas_cumprod, load_unet

    for layer, width in [("mid", 16), ("down.0", 8), ("down.1", 16), ("up.1", 8)]:
        assert layer_channels(TINY_UNET, layer) == width
        cfg = EmbeddingConfig(encoder="ddpm", path=unet_path, layer=layer, timestep=10, batch_size=4)
        first = embed(digits[:6], cfg, unet_config=TINY_UNET, scheduler_config=SCHEDULER)
        again = embed(digits[:6], cfg, unet_config=TINY_UNET, scheduler_config=SCHEDULER)
        assert first.shape == (6, width)
        assert np.array_equal(first, again)
    # independent computation of ``down.0`` at t = 10 with seeded noise, one image at a time
    cfg = EmbeddingConfig(encoder="ddpm", path=unet_path, layer="down.0", timestep=10, noise_seed=3, batch_size=4)
    ours = embed(digits[:6], cfg, unet_config=TINY_UNET, scheduler_config=SCHEDULER)
    unet = load_unet(unet_path, TINY_UNET)
    eps = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(3))[None]
    abar = alphas_cumprod(SCHEDULER)
    with torch.no_grad():
        for i in range(6):
            t = torch.tensor([10])
            x_t = add_noise(torch.from_numpy(digits[i:i + 1]), eps, t, abar)
            emb = unet.time_embedding(unet.time_proj(t).to(x_t.dtype))
            h = unet.down_blocks[0](unet.conv_in(x_t), emb)[0]
            np.testing.assert_allclose(ours[i], h.mean(dim=(2, 3))[0].double().numpy(), atol=1e-5)
    # the embedding of an image does not depend on the batch it is in
    np.testing.assert_allclose(embed(digits[:6], EmbeddingConfig(**{**cfg.__dict__, "batch_size": 1}),
                                     unet_config=TINY_UNET, scheduler_config=SCHEDULER), ours, atol=1e-5)
    with pytest.raises(ValueError, match="layer"):
        EmbeddingConfig(encoder="ddpm", path=unet_path, layer="middle")
    with pytest.raises(ValueError, match="down blocks"):
        embed(digits[:1], EmbeddingConfig(encoder="ddpm", path=unet_path, layer="down.5"), unet_config=TINY_UNET)


@pytest.mark.parametrize("encoder", ["clip", "ddpm"])
def test_nearest_training_image_of_a_training_image_is_itself(encoder, clip_dir, unet_path, digits):
    path = clip_dir if encoder == "clip" else unet_path
    cfg = EmbeddingConfig(encoder=encoder, path=path, similarity="cosine", batch_size=32, timestep=5)
    scores = embedding_scores(digits[:12], digits, cfg, unet_config=TINY_UNET, scheduler_config=SCHEDULER)
    assert np.array_equal(scores.argmax(axis=1), np.arange(12))
    others = scores.copy()
    others[np.arange(12), np.arange(12)] = -np.inf
    assert (scores[np.arange(12), np.arange(12)] > others.max(axis=1)).all()


def test_registry_scorer_on_the_digits_store(digits_store, unet_path):
    params = {"kind": "embedding", "encoder": "ddpm", "path": unet_path, "similarity": "dot",
              "unet": TINY_UNET, "scheduler": SCHEDULER}
    blocks = embedding_method_scores(ScoreContext.from_params(params, {"data": digits_store}, "val"))
    assert (blocks.n_queries, blocks.n_train) == (30, 200)
    assert blocks.block(0, 5).shape == (5, 200)
    assert blocks.attrs["encoder"] == "ddpm" and blocks.attrs["layer"] == "mid"
