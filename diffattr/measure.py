"""measure_outputs: a model's per-sample L_Simple on every attributed sample at each (noise seed, t)
pair of the ground truth (METHODS.md §4.3).

ε for (noise seed, t, sample) comes from :mod:`diffattr.noise`, so every model is measured on the
same draws and two runs give bit-identical matrices on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from diffattr.ground_truth import GroundTruthConfig, write_measurement
from diffattr.models.ddpm import add_noise
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
) -> np.ndarray:
    """(P, N) float32 L_Simple of each sample (float (N, C, H, W) in [−1, 1]) at each (seed, t) pair."""
    out = np.empty((len(pairs), len(images)), dtype=np.float32)
    for p, rows, x_t, eps, tt in ground_truth_draws(images, split, pairs, abar, batch_size, device):
        out[p, rows] = l_simple(model(x_t, tt).sample, eps).float().cpu().numpy()
    return out


def measure_model(model_path: str, stores: dict[str, str], params: dict, out_path: str, device: str = "cpu") -> dict[str, np.ndarray]:
    """measure_outputs: one model's per-pair losses on every attributed set (``stores``: set → image store)."""
    from diffattr.data.store import read_images, to_model_range
    from diffattr.models.ddpm import alphas_cumprod, load_unet

    cfg = GroundTruthConfig.from_dict(params["ground_truth"])
    model = load_unet(model_path, params["unet"], device)
    abar = alphas_cumprod(params["scheduler"])
    pairs = cfg.pairs(len(abar))
    losses = {split: measure_losses(model, to_model_range(read_images(store, split)), split, pairs, abar, cfg.batch_size, device)
              for split, store in stores.items()}
    write_measurement(out_path, losses, pairs)
    return losses
