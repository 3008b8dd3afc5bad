"""Unconditional DDPM: diffusers ``UNet2DModel`` + ``DDPMScheduler`` built from explicit configs.

docs/methods.md §0 and §3: ε-prediction, T = 1000, linear β from 1e-4 to 0.02 by default. The UNet's
keyword arguments are exactly diffusers' (``model.unet`` in the config), so any architecture of the
D-TRAK benchmark (DDPM-CIFAR, 36 M parameters) is a config change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from diffattr.integrity import check_safetensors
from diffattr.models.checkpoint import save_safetensors
from diffattr.models.diffusers_classes import DDPMScheduler, UNet2DModel
from diffattr.models.weights import check_weights_file


def build_unet(unet_config: dict[str, Any]) -> UNet2DModel:
    """A ``UNet2DModel`` from its diffusers keyword arguments (lists become tuples)."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in unet_config.items()}
    return UNet2DModel(**kwargs)


def build_scheduler(scheduler_config: dict[str, Any]) -> DDPMScheduler:
    """The training/noising scheduler (ε-prediction)."""
    return DDPMScheduler(prediction_type="epsilon", **scheduler_config)


def alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1 as float32."""
    return build_scheduler(scheduler_config).alphas_cumprod.to(torch.float32)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x₀ + sqrt(1−ᾱ_t)·ε (docs/methods.md §0); ``t`` indexes ``abar`` per row."""
    a = abar.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def noisy_draws(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D draws per sample folded into B·D rows: (x_t, t, ε) from x₀ (B, C, H, W), t (B, D) and
    ε (B, D, C, H, W), x_t by :func:`add_noise`; row b·D + d is sample b's draw d."""
    b, d = t.shape
    x = x0.unsqueeze(1).expand(b, d, *x0.shape[1:]).reshape(b * d, *x0.shape[1:])
    t, eps = t.reshape(-1), eps.reshape(b * d, *x0.shape[1:])
    return add_noise(x, eps, t, abar), t, eps


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the model's weights as safetensors (atomically, the same bytes in every process:
    :func:`~diffattr.models.checkpoint.save_safetensors`), each metadata value JSON-encoded."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(tensors, path, {k: json.dumps(v, sort_keys=True) for k, v in metadata.items()})


def load_unet(path: str | Path, unet_config: dict[str, Any], device: str = "cpu") -> UNet2DModel:
    """Build a UNet from config and load safetensors weights (no pickle: a pickle file is refused by
    :func:`~diffattr.models.weights.check_weights_file` before it is read), in eval mode."""
    check_weights_file(path)
    check_safetensors(path)  # a truncated checkpoint: one sentence naming it and its rule
    model = build_unet(unet_config)
    try:
        state = load_file(str(path), device=device)
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise ValueError(f"checkpoint {path} cannot be read as safetensors ({err})") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match model.unet: "
            f"{len(missing)} missing and {len(unexpected)} unexpected tensors"
        )
    return model.to(device).eval()
