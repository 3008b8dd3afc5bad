"""Text-to-image latent diffusion with LoRA: Stable-Diffusion components, frozen, plus a LoRA adapter.

docs/methods.md §3 "ArtBench SD-LoRA": a pretrained Stable-Diffusion pipeline (UNet2DConditionModel, CLIP
text encoder and tokenizer, AutoencoderKL) is fine-tuned with LoRA on the attention projections of the
UNet (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of every self- and cross-attention); only the LoRA
weights train. Each image is captioned "a {label} painting" and training runs in the VAE's latent space
(docs/methods.md §0): z = ``latent_dist.mode()`` · ``scaling_factor``, and the per-sample loss is L_Simple,
the mean over latent dimensions of (ε_θ(√ᾱ_t z + √(1−ᾱ_t) ε, t, c) − ε)² with c the text encoder's last
hidden state. Attribution methods on this family (D-TRAK's ArtBench features, §2.10–2.11; attribution by
unlearning, §2.17) differentiate with respect to the LoRA weights only (:func:`lora_gradient`, and the
workflow's featurization through :mod:`diffattr.models.family`); §2.17's "only ``attn2.to_k``/``attn2.to_v``"
is the unlearning method's ``params`` filter over the LoRA weights.

Components come either from a local diffusers pipeline directory (``pipeline_path``; nothing is ever
downloaded, and only safetensors weights are read: :func:`diffattr.models.weights.check_pipeline_dir`) or, for tests and smoke runs, are built tiny and randomly initialised from diffusers /
transformers keyword arguments, with an offline word-level tokenizer (:func:`build_tokenizer`).

LoRA initialisation: peft's ``init_lora_weights="gaussian"`` draws A ~ N(0, 1/r²) (std 1/r) and sets
B = 0 — the same as the ``LoRAAttnProcessor`` of D-TRAK's code — so at initialisation the adapted UNet
is exactly the base UNet, and the gradient with respect to every A is exactly zero until B has moved
(∂ℓ/∂A = Bᵀ(…) = 0). Gradient features of an untrained adapter therefore carry only the B block.
The LoRA scale is ``alpha / rank``; ``alpha`` defaults to ``rank`` (scale 1, as ``LoRAAttnProcessor``
without ``network_alpha``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from torch.func import functional_call, grad, vmap
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from diffattr.atomic import atomic_path
from diffattr.integrity import check_safetensors
from diffattr.models.checkpoint import save_safetensors
from diffattr.models.ddpm import add_noise
from diffattr.models.weights import check_pipeline_dir, check_weights_file

DEFAULT_TARGET_MODULES: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_LORA_RANK = 128  # docs/methods.md §3: LoRAAttnProcessor(rank=128)
PAD, BOS, EOS, UNK = "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|unk|>"


def lora_settings(lora: dict[str, Any]) -> dict[str, Any]:
    """The ``lora`` block with defaults filled in: ``rank``, ``alpha`` (default ``rank``) and
    ``target_modules`` (module-name suffixes, default the attention projections)."""
    unknown = set(lora) - {"rank", "alpha", "target_modules"}
    if unknown:
        raise ValueError(f"unknown lora settings {sorted(unknown)}; expected rank, alpha, target_modules")
    rank = int(lora.get("rank", DEFAULT_LORA_RANK))
    alpha = lora.get("alpha")
    targets = list(lora.get("target_modules", DEFAULT_TARGET_MODULES))
    if rank < 1 or not targets:
        raise ValueError(f"lora needs rank >= 1 and at least one target module, got {lora}")
    return {"rank": rank, "alpha": float(rank if alpha is None else alpha), "target_modules": targets}


@dataclass(frozen=True)
class TextToImageConfig:
    """The text-to-image LoRA model block of the config.

    ``pipeline_path``: a local diffusers pipeline directory (subfolders unet/, text_encoder/,
    tokenizer/, vae/); when None the components are built from ``unet`` (UNet2DConditionModel
    kwargs), ``text_encoder`` (CLIPTextConfig kwargs; vocabulary size and special-token ids come from
    the tokenizer) and ``vae`` (AutoencoderKL kwargs), randomly initialised. ``max_length`` is the
    built tokenizer's padded length (a loaded pipeline brings its own, 77 for CLIP).
    """

    pipeline_path: str | None = None
    unet: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=lambda: lora_settings({}))
    caption_template: str = "a {label} painting"
    max_length: int = 77

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TextToImageConfig:
        cfg = dict(cfg)
        cfg["lora"] = lora_settings(cfg.get("lora", {}))
        for key in ("unet", "text_encoder", "vae"):
            cfg[key] = dict(cfg.get(key, {}))
        return cls(**cfg)


@dataclass(frozen=True)
class Components:
    """The four pieces of a Stable-Diffusion pipeline that training and attribution use."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: PreTrainedTokenizerBase
    vae: AutoencoderKL


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def build_tokenizer(words: list[str], max_length: int) -> PreTrainedTokenizerFast:
    """A deterministic, offline word-level tokenizer whose vocabulary covers ``words``.

    Text is lower-cased and split by the ``Whitespace`` pre-tokenizer (runs of word characters, runs of
    punctuation); ``words`` may be whole captions, they are split the same way. Ids: 0 pad, 1 begin,
    2 end, 3 unknown, then the sorted vocabulary. Every encoding is ``<|startoftext|> … <|endoftext|>``,
    truncated and padded to ``max_length`` (CLIP's layout, with a distinct pad token).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    if max_length < 2:
        raise ValueError(f"max_length must leave room for the begin and end tokens, got {max_length}")
    pre = pre_tokenizers.Whitespace()
    normalizer = normalizers.Lowercase()
    pieces = {p for w in words for p, _ in pre.pre_tokenize_str(normalizer.normalize_str(w))}
    specials = [PAD, BOS, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pieces - set(specials)))}
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    backend.enable_truncation(max_length)
    backend.enable_padding(length=max_length, pad_id=vocab[PAD], pad_token=PAD)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=max_length, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        unk_token=UNK, padding_side="right",
    )


def build_components(cfg: TextToImageConfig, words: list[str], seed: int) -> Components:
    """Tiny randomly initialised components from the config's kwargs, seeded by ``seed`` (the global
    RNG is forked, so the caller's random state is untouched). Eval mode."""
    missing = [k for k in ("unet", "text_encoder", "vae") if not getattr(cfg, k)]
    if missing:
        raise ValueError(f"without pipeline_path the model needs {missing} keyword arguments")
    tokenizer = build_tokenizer(words, cfg.max_length)
    text_kwargs = {
        **cfg.text_encoder, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
    }
    positions = text_kwargs.get("max_position_embeddings", CLIPTextConfig().max_position_embeddings)
    if cfg.max_length > positions:
        raise ValueError(f"max_length {cfg.max_length} exceeds the text encoder's {positions} positions")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_tuples(cfg.unet))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_kwargs))
        vae = AutoencoderKL(**_tuples(cfg.vae))
    return Components(unet.eval(), text_encoder.eval(), tokenizer, vae.eval())


def load_components(path: str | Path) -> Components:
    """Components from a local diffusers pipeline directory, safetensors weights only (checked first by
    :func:`check_pipeline_dir`); never downloads, never unpickles. Eval mode."""
    root = check_pipeline_dir(path)
    safe = {"local_files_only": True, "use_safetensors": True}  # never a pickle file, never a download
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), **safe)
    text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), **safe)
    # no use_safetensors: a tokenizer has no weights, and it would keep the keyword in its saved config
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    vae = AutoencoderKL.from_pretrained(str(root / "vae"), **safe)
    return Components(unet.eval(), text_encoder.eval(), tokenizer, vae.eval())


def save_components(components: Components, path: str | Path) -> None:
    """Write the components (safetensors weights, JSON configs) into unet/, text_encoder/, tokenizer/
    and vae/ of ``path``, atomically. A UNet carrying a LoRA adapter is refused: save the base model
    before :func:`add_lora`, and the adapter with :func:`save_lora`."""
    if lora_parameters(components.unet):
        raise ValueError("the UNet carries a LoRA adapter; save the adapter with save_lora")
    with atomic_path(path) as tmp:
        components.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        components.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        components.tokenizer.save_pretrained(tmp / "tokenizer")
        components.vae.save_pretrained(tmp / "vae", safe_serialization=True)


def components(cfg: TextToImageConfig, words: list[str], seed: int) -> Components:
    """Loaded from ``cfg.pipeline_path`` when set (``words`` and ``seed`` unused), else built tiny."""
    if cfg.pipeline_path is not None:
        return load_components(cfg.pipeline_path)
    return build_components(cfg, words, seed)


def add_lora(unet: UNet2DConditionModel, lora: dict[str, Any], seed: int) -> None:
    """Attach a peft LoRA adapter to ``unet`` in place and freeze every other parameter.

    Modules whose name equals or ends with ``.<target>`` get the adapter (peft's matching). Gaussian
    init (A ~ N(0, 1/r²), B = 0: the adapted UNet equals the base one), drawn under ``seed`` with
    the caller's RNG state untouched.
    """
    from peft import LoraConfig

    settings = lora_settings(lora)
    config = LoraConfig(
        r=settings["rank"], lora_alpha=settings["alpha"], target_modules=settings["target_modules"],
        init_lora_weights="gaussian",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)
    names = set(lora_parameters(unet))  # peft raises a ValueError when no module matches a target
    for name, param in unet.named_parameters():
        param.requires_grad_(name in names)


def _is_lora(name: str) -> bool:
    return ".lora_" in name


def lora_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Exactly the LoRA weights, by sorted parameter name (the flattening order of gradients)."""
    return dict(sorted((n, p) for n, p in unet.named_parameters() if _is_lora(n)))


def count_lora_parameters(unet: torch.nn.Module) -> int:
    return sum(p.numel() for p in lora_parameters(unet).values())


def save_lora(unet: torch.nn.Module, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write only the LoRA tensors as safetensors (atomically, the same bytes in every process:
    :func:`~diffattr.models.checkpoint.save_safetensors`), each metadata value JSON-encoded."""
    tensors = {n: p.detach().cpu().contiguous() for n, p in lora_parameters(unet).items()}
    if not tensors:
        raise ValueError("the UNet has no LoRA adapter to save")
    save_safetensors(tensors, path, {k: json.dumps(v, sort_keys=True) for k, v in metadata.items()})


def load_lora(unet: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy saved LoRA tensors into ``unet``'s adapter (same names and shapes); return the metadata."""
    params = lora_parameters(unet)
    check_weights_file(path)
    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise ValueError(f"LoRA file {path} cannot be read as safetensors ({err})") from err
    if set(state) != set(params):
        raise ValueError(
            f"LoRA file {path} does not match the UNet's adapter: {len(set(params) - set(state))} missing and "
            f"{len(set(state) - set(params))} unexpected tensors"
        )
    bad = [n for n, p in params.items() if state[n].shape != p.shape]
    if bad:
        raise ValueError(f"LoRA file {path} has tensors of other shapes than the adapter: {bad[:3]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])
    return metadata


def captions(labels: list[str], template: str = "a {label} painting") -> list[str]:
    """One caption per label (docs/methods.md §0: "a {style} painting"); labels are used verbatim."""
    return [template.format(label=label) for label in labels]


@torch.no_grad()
def encode_prompts(components: Components, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden state (n, max_length, hidden) of the prompts, padded to the
    tokenizer's ``model_max_length`` and passed without attention mask (as Stable Diffusion does)."""
    ids = components.tokenizer(
        prompts, padding="max_length", max_length=components.tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    return components.text_encoder(ids.to(components.text_encoder.device)).last_hidden_state


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Latents ``latent_dist.mode()`` · ``scaling_factor`` of images (n, C, H, W) in [−1, 1].

    Stable-Diffusion training samples the latent distribution; we take its mode, as D-TRAK's gradient
    code does (docs/methods.md §0), so latents — hence features and retraining ground truth — are
    deterministic.
    """
    return vae.encode(images).latent_dist.mode() * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Images (n, C, H, W) clamped to [−1, 1] from latents scaled as :func:`encode_images` scales them."""
    return vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)


def latent_loss(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    text_states: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """Per-sample L_Simple (n,): mean over latent dims of (ε_θ(z_t, t, c) − ε)², z_t by ``add_noise``."""
    z_t = add_noise(latents, noise, timesteps, alphas_cumprod)
    pred = unet(z_t, timesteps, encoder_hidden_states=text_states).sample
    return (pred - noise).pow(2).flatten(1).mean(dim=1)


@contextlib.contextmanager
def plain_attention(unet: UNet2DConditionModel) -> Iterator[UNet2DConditionModel]:
    """Temporarily swap every attention processor for the plain ``AttnProcessor``; restore on exit.

    Under ``vmap``, torch (2.13, CPU) has no batching rule for the fused scaled-dot-product kernels of
    ``AttnProcessor2_0`` and falls back to a slow per-sample loop (with a warning); the plain processor
    is made of batched matmuls and a softmax, the same attention up to rounding.
    """
    from diffusers.models.attention_processor import AttnProcessor

    saved = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())
    try:
        yield unet
    finally:
        unet.set_attn_processor(saved)


def lora_gradient(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    text_states: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-sample gradients (n, p_lora) of :func:`latent_loss` with respect to the LoRA weights only.

    ``torch.func``: ``vmap(grad(·))`` over samples of a ``functional_call`` whose differentiated
    argument is the LoRA weights; every other parameter and buffer enters as a detached constant, so no
    gradient is computed for (or stored on) a non-LoRA weight, and ``.grad`` of the module is untouched.
    Columns follow :func:`lora_parameters`' sorted names. Attention runs through the plain processor
    during the call (:func:`plain_attention`); the module's train/eval mode is used as it is.
    """
    lora = {n: p.detach() for n, p in lora_parameters(unet).items()}
    if not lora:
        raise ValueError("the UNet has no LoRA adapter")
    frozen = {n: p.detach() for n, p in unet.named_parameters() if n not in lora}
    buffers = {n: b.detach() for n, b in unet.named_buffers()}
    abar = alphas_cumprod.to(latents.device)

    def sample_loss(p: dict[str, torch.Tensor], z: torch.Tensor, c: torch.Tensor, t: torch.Tensor,
                    eps: torch.Tensor) -> torch.Tensor:
        z_t = add_noise(z[None], eps[None], t[None], abar)
        pred = functional_call(unet, (p, frozen, buffers), (z_t, t[None]), {"encoder_hidden_states": c[None]}).sample
        return (pred - eps[None]).pow(2).mean()

    with plain_attention(unet):
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0, 0), chunk_size=chunk_size)(
            lora, latents, text_states, timesteps, noise
        )
    return torch.cat([grads[n].reshape(latents.shape[0], -1) for n in lora], dim=1)
