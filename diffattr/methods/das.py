"""DAS's training-residual weight (docs/methods.md §2.13, step 3).

e_{i,t} = L_Simple of training sample z_i at timestep t (one ε per (noise seed, t), the ground
truth's noise scheme) on the method's model; r_i = mean_t( sqrt(e_{i,t}) / ‖sqrt(e_{i,·})‖₂ ).
DAS multiplies the kernel score by r_i (``residual`` in :mod:`diffattr.methods.trak`); its features
are a ``mean``-output spec with per-timestep normalisation (steps 1–2, a feature-spec knob).
"""

from __future__ import annotations

from typing import Any

from pathlib import Path

import numpy as np
import zarr

from diffattr.atomic import atomic_path
from diffattr.integrity import StoreError, array_options, missing_advice, open_store, read_array, require_arrays, seal
from diffattr.noise import timestep_set


def residual_weights(errors: np.ndarray) -> np.ndarray:
    """r (N,) from per-timestep errors e (T × N): the mean over t of sqrt(e) / ‖sqrt(e)‖₂ over t."""
    root = np.sqrt(np.asarray(errors, dtype=np.float64))
    return (root / np.linalg.norm(root, axis=0, keepdims=True).clip(1e-300)).mean(axis=0)


def write_residuals(model_path: str, data_store: str, params: dict[str, Any], out_path: str, device: str = "cpu") -> np.ndarray:
    """residual job: e_{i,t} on the training set at ``params["timesteps"]`` uniform timesteps, and r
    (a checksummed, sealed store, :mod:`diffattr.integrity`)."""
    from diffattr.data.store import read_images, to_model_range
    from diffattr.measure import measure_losses
    from diffattr.models.ddpm import alphas_cumprod, load_unet

    model = load_unet(model_path, params["unet"], device)
    abar = alphas_cumprod(params["scheduler"])
    ts = timestep_set("uniform", params["timesteps"], len(abar))
    pairs = np.stack([np.full_like(ts, params["noise_seed"]), ts], axis=1)
    errors = measure_losses(model, to_model_range(read_images(data_store, "train")), "train", pairs, abar,
                            params["batch_size"], device)
    weights = residual_weights(errors)
    with atomic_path(out_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"timesteps": ts.tolist(), "noise_seed": params["noise_seed"]})
        root.create_array("errors", data=errors, chunks=errors.shape, **array_options())
        root.create_array("weights", data=weights, chunks=weights.shape, **array_options())
        seal(root)
    return weights


def read_residual_weights(path: str) -> np.ndarray:
    """r (N,) float64 of the residual store at ``path``; a missing store or ``weights`` array or a
    damaged chunk raises :class:`diffattr.integrity.StoreError` in one sentence."""
    if not Path(path).exists():
        raise StoreError(f"Residual store '{path}' does not exist; {missing_advice(path)}.")
    root = open_store(path)
    require_arrays(path, root, ("weights",))
    return read_array(path, root["weights"], slice(None), "weights").astype(np.float64, copy=False)
