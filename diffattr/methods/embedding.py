"""Embedding-similarity attribution (docs/methods.md §2.2 "CLIP similarity", §2.16 AbC).

An image encoder E maps each image to a vector e = E(x) ∈ R^d and the score of training image z for
query x is either

- ``dot``:    τ(x, z) = e(x)ᵀ e(z)                          (§2.2, D-TRAK's CLIP dot score), or
- ``cosine``: τ(x, z) = e(x)ᵀ e(z) / (‖e(x)‖₂ · ‖e(z)‖₂)     (§2.2 cosine; §2.16 AbC's score).

Larger τ means "z helps x" (sign ``HELPS`` in :mod:`diffattr.methods.registry`, docs/methods.md §0, §4.4).
Nothing here downloads anything; two encoder families load from local files only:

``clip``
    A transformers ``CLIPVisionModelWithProjection`` read with ``from_pretrained(path,
    local_files_only=True, use_safetensors=True)`` from a local directory (a directory whose weights are
    only pickle files is refused before loading); e(x) is its projected ``image_embeds`` (the
    counterpart of OpenAI CLIP's ``encode_image``, 512-d for ViT-B/32, §2.2). Preprocessing is done
    here in torch on images in [−1, 1] (:func:`clip_preprocess`): gray → 3 channels by replication,
    u = (x + 1)/2 ∈ [0, 1], bicubic resize of the shorter side to S (the model's ``image_size``
    unless overridden), centre crop S × S, clamp to [0, 1] (what an 8-bit PIL resize does), then
    (u − mean_c)/std_c with OpenAI CLIP's per-channel statistics (or the ``image_mean`` /
    ``image_std`` of a ``preprocessor_config.json`` found in the model directory).

``ddpm``
    The workflow's own trained DDPM UNet (a safetensors checkpoint read by
    :func:`diffattr.models.ddpm.load_unet`) used as a feature extractor, so the default digits config
    needs no shipped weights. With a fixed timestep t and a fixed noise image ε (zeros by default,
    or one N(0, I) draw from ``noise_seed`` shared by every image), the UNet runs on
    x_t = sqrt(ᾱ_t)·x₀ + sqrt(1−ᾱ_t)·ε (docs/methods.md §0) and e(x) is the spatial mean of the chosen
    block's output activations: ``mid`` (mid block), ``down.i`` or ``up.i`` (i-th down / up block).
    Its dimension is that block's channel count. The embedding of an image depends on nothing but the
    image (not on its batch or position), so a training image queried against itself always matches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from diffattr.methods.registry import ScoreBlocks, ScoreContext

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel (R, G, B) mean of OpenAI CLIP's preprocessing, for pixels scaled to [0, 1]."""
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel (R, G, B) standard deviation of OpenAI CLIP's preprocessing, for pixels in [0, 1]."""

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""A batch (b, C, H, W) in [−1, 1] on the encoder's device → embeddings (b, d)."""


@dataclass(frozen=True)
class EmbeddingConfig:
    """Knobs of an embedding-similarity method (docs/methods.md §2.2, §2.16).

    ``path``: the CLIP model directory (``clip``) or the UNet safetensors checkpoint (``ddpm``).
    ``layer``, ``timestep`` and ``noise_seed`` apply to ``ddpm`` only; ``image_size`` to ``clip``
    only (None: the model's own ``image_size``; another value interpolates the position embeddings).
    """

    encoder: Literal["clip", "ddpm"]
    path: str
    similarity: Literal["dot", "cosine"] = "cosine"
    batch_size: int = 64
    layer: str = "mid"
    timestep: int = 0
    noise_seed: int | None = None
    image_size: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.encoder not in ("clip", "ddpm"):
            raise ValueError(f"embedding encoder must be 'clip' or 'ddpm', not {self.encoder!r}")
        if self.similarity not in ("dot", "cosine"):
            raise ValueError(f"embedding similarity must be 'dot' or 'cosine', not {self.similarity!r}")
        if self.batch_size < 1:
            raise ValueError(f"embedding batch_size must be at least 1, not {self.batch_size}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"embedding image_size must be positive, not {self.image_size}")
        if self.timestep < 0:
            raise ValueError(f"embedding timestep must be non-negative, not {self.timestep}")
        _parse_layer(self.layer)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EmbeddingConfig:
        """The config from a method's parameter mapping; keys that are not fields are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


# --------------------------------------------------------------------------------------------- CLIP


def clip_preprocess(images: torch.Tensor, image_size: int,
                    mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
                    std: tuple[float, ...] = OPENAI_CLIP_STD) -> torch.Tensor:
    """CLIP ``pixel_values`` (n, 3, S, S) from images (n, C, H, W) in [−1, 1], C ∈ {1, 3} (§2.2).

    u = (x + 1)/2; gray replicated to 3 channels; bicubic resize so the shorter side is S (the
    longer becomes ⌊S·long/short⌋, antialiased when shrinking); centre crop S × S (offset
    ⌊(size − S)/2⌋); clamp to [0, 1]; then (u − mean_c)/std_c.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (n, 1 or 3, H, W), got shape {tuple(images.shape)}")
    u = (images.to(torch.float32) + 1.0) / 2.0
    if u.shape[1] == 1:
        u = u.expand(-1, 3, -1, -1)
    h, w = u.shape[-2:]
    short, long = min(h, w), max(h, w)
    new_long = int(image_size * long / short)
    size = (image_size, new_long) if h <= w else (new_long, image_size)
    if size != (h, w):
        u = F.interpolate(u, size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    u = u[:, :, top:top + image_size, left:left + image_size].clamp(0.0, 1.0)
    m = torch.tensor(mean, dtype=u.dtype, device=u.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=u.dtype, device=u.device).view(1, 3, 1, 1)
    return (u - m) / s


def clip_statistics(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from the directory's ``preprocessor_config.json`` if it has one, else OpenAI's."""
    pre = Path(path) / "preprocessor_config.json"
    if pre.is_file():
        saved = json.loads(pre.read_text())
        if "image_mean" in saved and "image_std" in saved:
            return _triple(saved["image_mean"]), _triple(saved["image_std"])
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def _triple(value: float | list[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, list) else (float(value),) * 3


def load_clip(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """A ``CLIPVisionModelWithProjection`` from a local directory, float32, eval: safetensors weights
    only (checked first by :func:`~diffattr.models.weights.check_weights_dir`), never downloads."""
    from transformers import CLIPVisionModelWithProjection

    from diffattr.models.weights import check_weights_dir

    root = check_weights_dir(path)
    model = CLIPVisionModelWithProjection.from_pretrained(str(root), local_files_only=True, use_safetensors=True)
    return model.to(device=device, dtype=torch.float32).eval()


def clip_encoder(cfg: EmbeddingConfig) -> Encoder:
    """E(x) = CLIP ``image_embeds`` of :func:`clip_preprocess` (x) (§2.2)."""
    model = load_clip(cfg.path, cfg.device)
    native = int(model.config.image_size)
    size = cfg.image_size or native
    mean, std = clip_statistics(cfg.path)

    def encode(batch: torch.Tensor) -> torch.Tensor:
        pixels = clip_preprocess(batch, size, mean, std)
        return model(pixel_values=pixels, interpolate_pos_encoding=size != native).image_embeds

    return encode


# --------------------------------------------------------------------------------------------- DDPM


def _parse_layer(layer: str) -> tuple[str, int | None]:
    if layer == "mid":
        return "mid", None
    kind, _, index = layer.partition(".")
    if kind in ("down", "up") and index.isdigit():
        return kind, int(index)
    raise ValueError(f"embedding layer must be 'mid', 'down.<i>' or 'up.<i>', not {layer!r}")


def layer_channels(unet_config: Mapping[str, Any], layer: str) -> int:
    """Channels of a UNet block's output, i.e. the ``ddpm`` embedding dimension for ``layer``."""
    channels = list(unet_config.get("block_out_channels", (224, 448, 672, 896)))
    kind, index = _parse_layer(layer)
    if kind == "mid":
        return channels[-1]
    order = channels if kind == "down" else channels[::-1]
    if index >= len(order):
        raise ValueError(f"embedding layer {layer!r} does not exist: the UNet has {len(order)} {kind} blocks")
    return order[index]


def _block(unet: torch.nn.Module, layer: str) -> torch.nn.Module:
    kind, index = _parse_layer(layer)
    if kind == "mid":
        return unet.mid_block
    blocks = unet.down_blocks if kind == "down" else unet.up_blocks
    if index >= len(blocks):
        raise ValueError(f"embedding layer {layer!r} does not exist: the UNet has {len(blocks)} {kind} blocks")
    return blocks[index]


def ddpm_encoder(cfg: EmbeddingConfig, unet_config: Mapping[str, Any],
                 scheduler_config: Mapping[str, Any] | None = None) -> Encoder:
    """E(x) = mean over (h, w) of block ``cfg.layer``'s output on UNet(x_t, t), t = ``cfg.timestep``.

    x_t = sqrt(ᾱ_t)·x + sqrt(1−ᾱ_t)·ε (docs/methods.md §0) with ε = 0, or with one ε ~ N(0, I) of shape
    (C, H, W) drawn from ``torch.Generator().manual_seed(noise_seed)`` and shared by all images.
    ``scheduler_config`` (``model.scheduler``) gives ᾱ; None means diffusers' default (T = 1000,
    linear β from 1e-4 to 0.02).
    """
    from diffattr.models.ddpm import add_noise, alphas_cumprod, load_unet

    path = Path(cfg.path)
    if not path.is_file():
        raise FileNotFoundError(f"DDPM encoder checkpoint {path} does not exist.")
    unet = load_unet(path, dict(unet_config), cfg.device)
    block = _block(unet, cfg.layer)
    abar = alphas_cumprod(dict(scheduler_config or {}))
    if cfg.timestep >= len(abar):
        raise ValueError(f"embedding timestep {cfg.timestep} is not below T = {len(abar)}")
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    if cfg.noise_seed is None:
        noise = torch.zeros(shape)
    else:
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(cfg.noise_seed))
    noise = noise.to(cfg.device)

    def encode(batch: torch.Tensor) -> torch.Tensor:
        t = torch.full((len(batch),), cfg.timestep, dtype=torch.long, device=batch.device)
        x_t = add_noise(batch.to(torch.float32), noise.expand_as(batch), t, abar)
        captured: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = block.register_forward_hook(hook)
        try:
            unet(x_t, t)
        finally:
            handle.remove()
        return captured[0].mean(dim=(2, 3))

    return encode


# ------------------------------------------------------------------------------------- embeddings


def load_encoder(cfg: EmbeddingConfig, unet_config: Mapping[str, Any] | None = None,
                 scheduler_config: Mapping[str, Any] | None = None) -> Encoder:
    """The encoder ``cfg`` names, loaded from local files; ``ddpm`` needs ``unet_config``."""
    if cfg.encoder == "clip":
        return clip_encoder(cfg)
    if unet_config is None:
        raise ValueError("the ddpm embedding encoder needs the UNet config (model.unet)")
    return ddpm_encoder(cfg, unet_config, scheduler_config)


def embed(images: np.ndarray, cfg: EmbeddingConfig, *, encoder: Encoder | None = None,
          unet_config: Mapping[str, Any] | None = None,
          scheduler_config: Mapping[str, Any] | None = None) -> np.ndarray:
    """Embeddings e(x) (n, d) float64 of images (n, C, H, W) in [−1, 1], in batches of
    ``cfg.batch_size`` under ``torch.no_grad``; ``encoder`` reuses one from :func:`load_encoder`."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, C, H, W), got shape {images.shape}")
    encode = encoder or load_encoder(cfg, unet_config, scheduler_config)
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), cfg.batch_size):
            batch = torch.as_tensor(images[start:start + cfg.batch_size], dtype=torch.float32, device=cfg.device)
            parts.append(encode(batch).to("cpu", torch.float64).numpy())
    if not parts:
        raise ValueError("no images to embed")
    return np.concatenate(parts)


def similarity_matrix(queries: np.ndarray, train: np.ndarray, similarity: str) -> np.ndarray:
    """(n_queries × n_train) τ: eᵀe' (``dot``) or eᵀe'/(‖e‖·‖e'‖) (``cosine``, norms clipped at 1e-12)."""
    q = np.asarray(queries, dtype=np.float64)
    z = np.asarray(train, dtype=np.float64)
    if similarity == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
        z = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
    elif similarity != "dot":
        raise ValueError(f"embedding similarity must be 'dot' or 'cosine', not {similarity!r}")
    return q @ z.T


def embedding_scores(queries: np.ndarray, train: np.ndarray, cfg: EmbeddingConfig, *,
                     unet_config: Mapping[str, Any] | None = None,
                     scheduler_config: Mapping[str, Any] | None = None) -> np.ndarray:
    """Scores τ (n_queries × n_train) of images in [−1, 1] (n, C, H, W): the encoder is loaded once,
    both sets embedded, then :func:`similarity_matrix` with ``cfg.similarity`` (§2.2, §2.16)."""
    encoder = load_encoder(cfg, unet_config, scheduler_config)
    e_query = embed(queries, cfg, encoder=encoder)
    e_train = embed(train, cfg, encoder=encoder)
    return similarity_matrix(e_query, e_train, cfg.similarity)


def embedding_method_scores(ctx: ScoreContext) -> ScoreBlocks:
    """A registry scorer (:class:`ScoreBlocks`). Inputs: ``data`` (and ``generated`` for ``gen``)
    image stores; for ``ddpm`` the checkpoint is the input ``checkpoint`` when given, else the
    setting ``path``. Settings: the :class:`EmbeddingConfig` fields; for ``ddpm`` the model's
    ``unet`` / ``scheduler``."""
    from diffattr.data.store import read_images, to_model_range
    from diffattr.jobs import device
    from diffattr.methods.similarity import query_images

    inputs = ctx.inputs
    settings = {**ctx.settings, "device": device()} | ({"path": inputs.checkpoint} if inputs.checkpoint else {})
    cfg = EmbeddingConfig.from_params(settings)
    train = to_model_range(read_images(inputs.data, "train"))
    queries = to_model_range(query_images(inputs, ctx.query_set))
    scores = embedding_scores(queries, train, cfg, unet_config=ctx.model.get("unet"),
                              scheduler_config=ctx.model.get("scheduler"))
    attrs = {"encoder": cfg.encoder, "similarity": cfg.similarity, "embedding_path": cfg.path}
    if cfg.encoder == "ddpm":
        attrs |= {"layer": cfg.layer, "timestep": cfg.timestep, "noise_seed": cfg.noise_seed}
    return ScoreBlocks.from_matrix(scores, attrs)
