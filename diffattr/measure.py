"""measure_outputs: a model's per-sample L_Simple on every attributed sample at each (noise seed, t)
pair of the ground truth (docs/methods.md §4.3).

ε for (noise seed, t, sample) comes from :mod:`diffattr.noise`, so every model is measured on the
same draws and two runs give bit-identical matrices on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from diffattr.ground_truth import GroundTruthConfig, write_measurement
from diffattr.models.ddpm import add_noise
from diffattr.models.family import denoise
from diffattr.noise import gaussian_noise
from diffattr.outputs import l_simple


def ground_truth_draws(images: np.ndarray, split: str, pairs: np.ndarray, abar: torch.Tensor, batch_size: int,
                       device: str = "cpu") -> Iterator[tuple[int, slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(pair index, rows, x_t, ε, t) for every (noise seed, t) pair and batch of samples: ε of
    sample i is ``gaussian_noise(seed, split, i, t)`` and x_t = sqrt(ᾱ_t)·x + sqrt(1−ᾱ_t)·ε — the
    ground truth's draws (§4.3), shared by every model that is measured on them."""
    x0 = torch.from_numpy(images).to(device)
    ids = np.arange(len(images))
    for p, (seed, t) in enumerate(pairs):
        eps_all = gaussian_noise(int(seed), split, ids, np.asarray([t]), images.shape[1:])[:, 0]
        for start in range(0, len(images), batch_size):
            rows = slice(start, start + batch_size)
            eps = torch.from_numpy(eps_all[rows]).to(device)
            tt = torch.full((len(eps),), int(t), dtype=torch.long, device=device)
            yield p, rows, add_noise(x0[rows], eps, tt, abar), eps, tt


@torch.no_grad()
def measure_losses(
    model: torch.nn.Module,
    images: np.ndarray,
    split: str,
    pairs: np.ndarray,
    abar: torch.Tensor,
    batch_size: int,
    device: str = "cpu",
    cond: np.ndarray | None = None,
) -> np.ndarray:
    """(P, N) float32 L_Simple of each sample at each (seed, t) pair: ``images`` are the network's
    float inputs (N, C, H, W) — pixels in [−1, 1], or latents — and ``cond`` (N,) their conditions
    (None: unconditional; :mod:`diffattr.models.family`)."""
    out = np.empty((len(pairs), len(images)), dtype=np.float32)
    labels = None if cond is None else torch.from_numpy(cond).to(device)
    for p, rows, x_t, eps, tt in ground_truth_draws(images, split, pairs, abar, batch_size, device):
        c = None if labels is None else labels[rows]
        out[p, rows] = l_simple(denoise(model, x_t, tt, c), eps).float().cpu().numpy()
    return out


def measure_model(model_path: str, stores: dict[str, str], params: dict, out_path: str, device: str = "cpu") -> dict[str, np.ndarray]:
    """measure_outputs: one model's per-pair losses on every attributed set (``stores``: set → image store)."""
    from diffattr.models.ddpm import alphas_cumprod
    from diffattr.models.family import load_model

    cfg = GroundTruthConfig.from_dict(params["ground_truth"])
    model = load_model(model_path, params, device)
    abar = alphas_cumprod(params["scheduler"])
    pairs = cfg.pairs(len(abar))
    losses = {}
    for split, store in stores.items():
        inputs, cond = model.inputs(store, split)
        losses[split] = measure_losses(model.network, inputs, split, pairs, abar, cfg.batch_size, device, cond)
    write_measurement(out_path, losses, pairs)
    return losses
