"""measure_outputs: a model's per-sample L_Simple on every attributed sample at each (noise seed, t)
pair of the ground truth (docs/methods.md §4.3).

ε for (noise seed, t, sample) comes from :mod:`diffattr.noise`, so every model is measured on the
same draws and two runs give bit-identical matrices on CPU.

One job measures a *part* of a pool (``ground_truth.models_per_job`` models,
:meth:`diffattr.workflow.plan.Plan.measurement_parts`), so the process start, the imports and the
stores' digests are paid once per part instead of once per model. Each model's store records the
source it was measured from (SHA-256 of its checkpoint and of the attributed sets' stores, and of
the job's params); a part that re-runs because the pool grew, or because one of its checkpoints
changed, measures only the models whose store is missing or records another source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from diffattr.ground_truth import GroundTruthConfig, write_measurement
from diffattr.models.ddpm import add_noise
from diffattr.models.family import denoise
from diffattr.noise import gaussian_noise
from diffattr.outputs import l_simple

log = logging.getLogger(__name__)


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


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a directory tree: each file's path relative to the root and its bytes,
    in sorted order (a zarr store's identity, whatever its mtimes)."""
    root, h = Path(path), hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        h.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def measurement_source(checkpoint: str, store_digests: Mapping[str, str], params: dict) -> dict[str, object]:
    """What a measurement is a function of: the checkpoint's bytes, the attributed sets' stores and
    the params (model and draws); written into the measurement store's attrs."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return {"checkpoint": content_digest(checkpoint), "stores": dict(sorted(store_digests.items())),
            "params": hashlib.sha256(blob).hexdigest()}


def recorded_source(path: str | os.PathLike, sets: list[str]) -> dict | None:
    """The source a finished measurement store records, if every set's losses read back intact
    (None: absent, damaged — :mod:`diffattr.integrity`'s checks — or written without a source)."""
    from diffattr.ground_truth import read_measurement
    from diffattr.integrity import StoreError, open_store

    if not os.path.isdir(path):
        return None
    try:
        for split in sets:
            read_measurement(path, split)
        return dict(open_store(path).attrs).get("source")
    except StoreError:
        return None


def measure_part(checkpoints: Mapping[tuple[int, int], str], outputs: Mapping[tuple[int, int], str],
                 stores: dict[str, str], params: dict, device: str = "cpu") -> list[tuple[int, int]]:
    """measure_outputs: the models of one part, (subset, seed) → checkpoint and → measurement store.
    A model whose store records the same :func:`measurement_source` is kept as it is; the others are
    measured (:func:`measure_model`) and written atomically (a damaged or missing one too: what
    ``--forcerun measure_outputs`` after a damage sentence relies on). Returns the models measured."""
    digests = {split: content_digest(store) for split, store in stores.items()}
    measured = []
    for key, checkpoint in checkpoints.items():
        source = measurement_source(checkpoint, digests, params)
        if recorded_source(outputs[key], list(stores)) == source:
            continue
        measure_model(checkpoint, stores, params, outputs[key], device, source)
        measured.append(key)
    kept = [key for key in checkpoints if key not in measured]
    log.info("measured %d of %d models %s; kept %s, whose stores match their checkpoints and params",
             len(measured), len(checkpoints), measured, kept)
    return measured


def measure_model(model_path: str, stores: dict[str, str], params: dict, out_path: str, device: str = "cpu",
                  source: dict | None = None) -> dict[str, np.ndarray]:
    """One model's per-pair losses on every attributed set (``stores``: set → image store);
    ``source`` (:func:`measurement_source`) is recorded with them."""
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
    write_measurement(out_path, losses, pairs, {"source": source} if source else None)
    return losses
