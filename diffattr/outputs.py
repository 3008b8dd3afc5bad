"""Output functions F(x, t, ε) of docs/methods.md §1, per sample, from the network output.

``pred`` is ε_θ(x_t, t) and ``eps`` the noise that made x_t, both (B, ...). Every function returns
one value per sample (B,). The ground truth (§4.3) is always ``loss`` (L_Simple).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

OUTPUT_FUNCTIONS = ("loss", "weighted_mse", "square", "mean", "l1", "l2", "linf")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def l_simple(pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """L_Simple: mean over the d output dimensions of (ε_θ − ε)² (§0)."""
    return _flat((pred - eps) ** 2).mean(dim=1)


def elbo_weight(t: torch.Tensor, betas: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """w_t = β_t / (2·α_t·(1 − ᾱ_t)) of L_ELBO (§1, ``weighted-mse``)."""
    b = betas.to(t.device)[t]
    return b / (2 * (1 - b) * (1 - abar.to(t.device)[t]))


def output_function(name: str) -> Callable[..., torch.Tensor]:
    """F by its config name; each takes (pred, eps, weight) where ``weight`` is w_t (or None)."""
    table: dict[str, Callable[..., torch.Tensor]] = {
        "loss": lambda pred, eps, weight: l_simple(pred, eps),
        "weighted_mse": lambda pred, eps, weight: weight * l_simple(pred, eps),
        "square": lambda pred, eps, weight: _flat(pred**2).mean(dim=1),
        "mean": lambda pred, eps, weight: _flat(pred).mean(dim=1),
        "l1": lambda pred, eps, weight: _flat(pred).abs().sum(dim=1),
        "l2": lambda pred, eps, weight: _flat(pred).norm(dim=1),
        "linf": lambda pred, eps, weight: _flat(pred).abs().amax(dim=1),
    }
    if name not in table:
        raise ValueError(f"unknown output function {name!r}; choose one of {OUTPUT_FUNCTIONS}")
    return table[name]


def output_values(name: str, pred: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, betas: torch.Tensor,
                  abar: torch.Tensor) -> torch.Tensor:
    """F per row for rows drawn at timesteps ``t``, with L_ELBO's weight w_t where F needs it."""
    weight = elbo_weight(t, betas, abar) if name == "weighted_mse" else None
    return output_function(name)(pred, eps, weight)
