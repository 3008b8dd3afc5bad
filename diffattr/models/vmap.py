"""What every per-sample-gradient user needs from the model (featurization, influence, unlearning):
a module below all of them, so none imports another's job module."""

from __future__ import annotations

import torch


class NonFiniteGradientError(ValueError):
    """A sample's gradient contains NaN or inf."""


def prepare_for_vmap(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, and the plain attention processor instead of fused SDPA (vmap has no batching rule for
    it and falls back to a slow per-sample loop, docs/methods.md §7.1)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    model.eval()
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
    return model
