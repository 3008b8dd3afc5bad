"""The model interface every stage uses: one :class:`Model` per family (docs/methods.md §3).

A family decides four things — what a stored image becomes as the network's input, how the trainable
network is built, loaded and saved, and how a sample is conditioned — and nothing downstream (training,
ground truth, featurization, generation, counterfactuals, unlearning) knows which family it runs.

- ``ddpm``: diffusers ``UNet2DModel`` on pixels in [−1, 1], unconditional; every weight trains; a
  checkpoint holds every weight (docs/methods.md §3 "DDPM training").
- ``text_to_image``: Stable-Diffusion components (:mod:`diffattr.models.text_to_image`) loaded from the
  base pipeline directory ``base`` (a local SD pipeline, or the one the workflow pretrains); the input is
  the VAE latent z = ``latent_dist.mode()`` · ``scaling_factor`` of the image and the condition is the
  text encoder's last hidden state of the sample's caption (docs/methods.md §3 "ArtBench SD-LoRA", §4.3
  "ArtBench: the same, in VAE latent space (mode()) with the caption"); only the LoRA weights train, so
  gradients, Fishers and checkpoints cover the LoRA weights only.

One call for both, :func:`denoise`: ``network(x_t, t).sample`` for the DDPM (``cond`` None), and
``network(x_t, t, class_labels=cond).sample`` for text-to-image ``cond`` (n,) indexes the caption table of
:class:`CaptionConditionedUNet` — each distinct caption plays the role of a class label. A sample's
caption is the store's caption column when the split has one, else the template "a {label} painting"
filled with its class name; the generated set stores the prompt of every image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

FAMILIES = ("ddpm", "text_to_image")
ENCODE_BATCH = 64
"""Images per VAE encoder call when turning a split into latents."""


def family_of(params: dict[str, Any]) -> str:
    """The model family of a job's model params (``family``, default ``ddpm``)."""
    family = params.get("family", "ddpm")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {FAMILIES}")
    return family


def condition_kwargs(cond: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Keyword arguments that condition a network call: none for an unconditional model."""
    return {} if cond is None else {"class_labels": cond}


def denoise(network: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """ε_θ(x_t, t[, c]): the network's prediction, conditioned on ``cond`` when given."""
    return network(x_t, t, **condition_kwargs(cond)).sample


class CaptionConditionedUNet(torch.nn.Module):
    """A ``UNet2DConditionModel`` whose text condition is looked up by caption index.

    ``context`` (P, L, H) holds the text encoder's states of P captions (a non-persistent buffer: it is
    never saved, and under ``torch.func.functional_call`` it enters as a constant); ``forward(x_t, t,
    class_labels)`` is ``unet(x_t, t, encoder_hidden_states=context[class_labels])``.
    """

    def __init__(self, unet: torch.nn.Module, context: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("context", context, persistent=False)

    @property
    def config(self) -> Any:
        return self.unet.config

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> Any:
        return self.unet(sample, timestep, encoder_hidden_states=self.context[class_labels])


@dataclass
class Model:
    """A trained (or trainable) network with what its family needs around it.

    ``network`` is called through :func:`denoise`; its parameters with
    ``requires_grad`` are exactly the trainable ones (all for the DDPM, the LoRA weights for
    text-to-image). ``components`` (text-to-image only) are the frozen VAE, text encoder and tokenizer.
    """

    network: torch.nn.Module
    params: dict[str, Any]
    components: Any = None
    _captions: dict[str, int] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return family_of(self.params)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters by name, in ``named_parameters`` order (gradients' column order)."""
        return {n: p for n, p in self.network.named_parameters() if p.requires_grad}

    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the network's input: pixels for the DDPM, latents for text-to-image."""
        cfg = self.network.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def to_inputs(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) → float32 network inputs (N, C, h, w): :meth:`encode` of the
        images in [−1, 1]."""
        from diffattr.data.store import to_model_range

        return self.encode(to_model_range(images))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Float images (N, C, H, W) in [−1, 1] → network inputs: themselves, or their VAE latents
        (mode · scaling factor, in batches of :data:`ENCODE_BATCH`)."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if self.components is None:
            return pixels
        from diffattr.models.text_to_image import encode_images

        vae = self.components.vae
        device = next(vae.parameters()).device
        out = [encode_images(vae, torch.from_numpy(pixels[i : i + ENCODE_BATCH]).to(device)).float().cpu().numpy()
               for i in range(0, len(pixels), ENCODE_BATCH)]
        return np.concatenate(out) if out else np.empty((0, *self.sample_shape()), dtype=np.float32)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Network-space samples → images in [−1, 1] (the VAE decoder for text-to-image)."""
        if self.components is None:
            return x.clamp(-1, 1)
        from diffattr.models.text_to_image import decode_latents

        return decode_latents(self.components.vae, x)

    def condition(self, prompts: list[str] | None) -> np.ndarray | None:
        """Caption indices (n,) of ``prompts``, adding unseen captions' text states to the network's
        caption table (indices handed out earlier stay valid); None for the DDPM."""
        if self.components is None:
            return None
        if prompts is None:
            raise ValueError("a text-to-image model needs a caption for every sample")
        new = [p for p in dict.fromkeys(prompts) if p not in self._captions]
        if new:
            from diffattr.models.text_to_image import encode_prompts

            states = encode_prompts(self.components, new).to(self.network.context.device)
            self.network.context = torch.cat([self.network.context, states]) if len(self._captions) else states
            for p in new:
                self._captions[p] = len(self._captions)
        return np.asarray([self._captions[p] for p in prompts], dtype=np.int64)

    def inputs(self, store: str, split: str, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows of a stored split as (network inputs (n, C, h, w), conditions (n,) or None)."""
        from diffattr.data.store import read_images

        prompts = split_captions(store, split, self.params)[rows] if self.components is not None else None
        return self.to_inputs(read_images(store, split, rows)), self.condition(prompts)


def split_captions(store: str, split: str, params: dict[str, Any]) -> list[str]:
    """Every sample's caption: the split's caption column, else the model's ``caption_template`` filled
    with the sample's class name, underscores as spaces (docs/methods.md §3: "a {style} painting"; ArtBench's
    ``ukiyo_e`` is prompted "a ukiyo e painting")."""
    from diffattr.data.store import read_captions, read_class_names, read_labels
    from diffattr.models.text_to_image import captions

    stored = read_captions(store, split)
    if stored is not None:
        return stored
    names = read_class_names(store, split)
    labels = read_labels(store, split)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"{split} samples of {store} have labels outside its {len(names)} class names and no captions")
    template = params["text_to_image"].get("caption_template", "a {label} painting")
    return captions([names[i].replace("_", " ") for i in labels], template)


def _text_to_image_model(params: dict[str, Any], seed: int, device: str) -> Model:
    from diffattr.models.text_to_image import TextToImageConfig, add_lora, load_components

    cfg = TextToImageConfig.from_dict(params["text_to_image"])
    comps = load_components(params["base"])
    add_lora(comps.unet, cfg.lora, seed)
    for module in (comps.vae, comps.text_encoder):
        module.requires_grad_(False).to(device)
    hidden = comps.text_encoder.config.hidden_size
    network = CaptionConditionedUNet(comps.unet, torch.zeros(0, 1, hidden)).to(device)
    return Model(network, params, comps)


def fresh_model(params: dict[str, Any], seed: int, device: str = "cpu") -> Model:
    """The untrained trainable model of a training run seeded by ``seed``: a DDPM initialised under
    ``torch.manual_seed(seed)``, or the base pipeline with a LoRA adapter drawn under ``seed``."""
    if family_of(params) == "ddpm":
        from diffattr.models.ddpm import build_unet

        torch.manual_seed(seed)
        return Model(build_unet(params["unet"]).to(device), params)
    return _text_to_image_model(params, seed, device)


def load_model(path: str, params: dict[str, Any], device: str = "cpu") -> Model:
    """A saved checkpoint, in eval mode (safetensors, no pickle): every DDPM weight, or the LoRA
    weights on top of the base pipeline."""
    if family_of(params) == "ddpm":
        from diffattr.models.ddpm import load_unet

        return Model(load_unet(path, params["unet"], device), params)
    from diffattr.models.text_to_image import load_lora

    model = _text_to_image_model(params, 0, device)
    load_lora(model.network.unet, path)
    model.network.eval()
    return model


def save_model(model: Model, path: str, metadata: dict[str, Any]) -> None:
    """Write a checkpoint atomically: the DDPM's weights, or only the LoRA weights."""
    if model.components is None:
        from diffattr.models.ddpm import save_weights

        save_weights(model.network, path, metadata)
    else:
        from diffattr.models.text_to_image import save_lora

        save_lora(model.network.unet, path, metadata)
