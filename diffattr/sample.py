"""DDIM generation with recorded per-image seeds (docs/methods.md §3 "Generation").

Image i starts from x_T drawn by numpy from seed ``gen_seed·1000 + i`` (D-TRAK's per-image seed),
so it does not depend on the batch it is generated in, nor on the device. DDIM with η = 0 is
deterministic given x_T; for η > 0 the per-step noise is drawn from (image seed, step) as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffattr.models.ddpm import build_scheduler
from diffattr.models.diffusers_classes import DDIMScheduler
from diffattr.models.family import denoise


@dataclass(frozen=True)
class GenerateConfig:
    """The ``generate`` block of the config (less ``model_seed``, which the DAG reads: the schema
    defaults it). ``count`` and ``steps`` are required (by the schema too); the other keys' defaults
    live here."""

    count: int
    steps: int
    eta: float = 0.0
    seed: int = 0
    batch_size: int = 256
    prompts: tuple[str, ...] | None = None

    def image_prompts(self) -> list[str] | None:
        """Image i's prompt: ``prompts`` in equal consecutive blocks (docs/methods.md §3: ArtBench-2's images
        0–499 use the first prompt, 500–999 the second); None for an unconditional model."""
        if not self.prompts:
            return None
        return [self.prompts[i * len(self.prompts) // self.count] for i in range(self.count)]


def image_seeds(gen_seed: int, count: int) -> np.ndarray:
    return gen_seed * 1000 + np.arange(count, dtype=np.int64)


def initial_noise(seeds: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([np.random.default_rng(int(s)).standard_normal(shape, dtype=np.float32) for s in seeds])


@torch.no_grad()
def ddim_trajectory(
    model: torch.nn.Module,
    scheduler_config: dict[str, Any],
    seeds: np.ndarray,
    steps: int,
    eta: float,
    batch_size: int,
    device: str = "cpu",
    record: bool = True,
    cond: np.ndarray | None = None,
    to_images: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """DDIM from the per-image initial noise: (images (n, C, H, W) in [−1, 1], x̂₀ at every step
    (n, S, C, H, W) clamped to [−1, 1] — diffusers' ``pred_original_sample``, the trajectory
    Journey-TRAK attributes (docs/methods.md §2.12) — or None unless ``record``, the S timesteps).
    Image i starts from :func:`initial_noise` of its seed, so it does not depend on its batch.
    ``cond`` (n,) conditions each image (a text-to-image model's caption indices); ``to_images`` maps
    the final samples to images (a latent model's VAE decoder; default: clamp to [−1, 1])."""
    cfg = model.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    scheduler = DDIMScheduler.from_config(build_scheduler(scheduler_config).config)
    scheduler.set_timesteps(steps)
    images, trajectory = [], []
    for start in range(0, len(seeds), batch_size):
        batch_seeds = seeds[start : start + batch_size]
        x = torch.from_numpy(initial_noise(batch_seeds, shape)).to(device)
        labels = None if cond is None else torch.from_numpy(cond[start : start + batch_size]).to(device)
        x0_hats = []
        for i, t in enumerate(scheduler.timesteps):
            eps = denoise(model, x, t.to(device).expand(len(x)), labels)
            variance_noise = None
            if eta > 0:
                variance_noise = torch.from_numpy(
                    np.stack([np.random.default_rng([int(s), i]).standard_normal(shape, dtype=np.float32) for s in batch_seeds])
                ).to(device)
            step = scheduler.step(eps, t, x, eta=eta, variance_noise=variance_noise)
            x = step.prev_sample
            if record:
                x0_hats.append(step.pred_original_sample.clamp(-1, 1).cpu().numpy())
        images.append((x.clamp(-1, 1) if to_images is None else to_images(x)).cpu().numpy())
        if record:
            trajectory.append(np.stack(x0_hats, axis=1))
    return (np.concatenate(images), np.concatenate(trajectory) if record else None,
            scheduler.timesteps.cpu().numpy().astype(np.int64))


def generate_config(block: dict[str, Any]) -> GenerateConfig:
    """The ``generate`` block (without ``model_seed``) as a :class:`GenerateConfig`."""
    block = dict(block)
    if block.get("prompts") is not None:
        block["prompts"] = tuple(block["prompts"])
    return GenerateConfig(**block)


def generate_set(model_path: str, params: dict[str, Any], store_path: str, table_path: str, device: str = "cpu") -> np.ndarray:
    """generate: the ``gen`` attributed set, quantised to 8 bits as a PNG save would (§7.6), with a
    table of per-image seeds."""
    import pandas as pd

    from diffattr.atomic import atomic_path
    from diffattr.data import ImageSet
    from diffattr.data.store import to_uint8, write_image_store
    from diffattr.models.family import load_model

    cfg = generate_config(params["generate"])
    model = load_model(model_path, params, device)
    seeds = image_seeds(cfg.seed, cfg.count)
    prompts = cfg.image_prompts()
    cond = model.condition(prompts)
    images = to_uint8(ddim_trajectory(model.network, params["scheduler"], seeds, cfg.steps, cfg.eta, cfg.batch_size,
                                      device, record=False, cond=cond, to_images=model.to_images)[0])
    sources = [f"ddim:seed{s}" for s in seeds]
    if prompts is None:
        gen = ImageSet(images, np.full(len(images), -1, dtype=np.int64), sources, [])
    else:
        labels = np.asarray([cfg.prompts.index(p) for p in prompts], dtype=np.int64)
        gen = ImageSet(images, labels, sources, list(cfg.prompts), prompts)
    write_image_store(store_path, {"gen": gen})
    table = {"index": np.arange(len(seeds)), "seed": seeds, "steps": cfg.steps, "eta": cfg.eta}
    if prompts is not None:
        table["prompt"] = prompts
    with atomic_path(table_path) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    return images


def record_trajectory(model_path: str, params: dict[str, Any], generated_store: str, out_path: str,
                      device: str = "cpu") -> np.ndarray:
    """trajectory: re-run ``generate``'s DDIM sampling and store x̂₀ at every step with the step's
    timestep (docs/methods.md §2.12), after checking that it ends at the stored generated images. The
    store is checksummed and sealed (:mod:`diffattr.integrity`)."""
    import zarr

    from diffattr.atomic import atomic_path
    from diffattr.data.store import read_images, to_uint8
    from diffattr.integrity import array_options, seal
    from diffattr.models.ddpm import load_unet

    cfg = generate_config(params["generate"])
    model = load_unet(model_path, params["unet"], device)
    images, trajectory, timesteps = ddim_trajectory(model, params["scheduler"], image_seeds(cfg.seed, cfg.count),
                                                    cfg.steps, cfg.eta, cfg.batch_size, device)
    stored, rerun = read_images(generated_store, "gen"), to_uint8(images)
    if stored.shape != rerun.shape or np.abs(rerun.astype(np.int16) - stored.astype(np.int16)).max() > 1:
        raise ValueError(f"the re-run DDIM trajectory does not end at the images in {generated_store} "
                         f"(was it generated by another model or config?)")
    with atomic_path(out_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"steps": cfg.steps, "eta": cfg.eta, "seed": cfg.seed})
        root.create_array("x0", data=trajectory.astype(np.float32), chunks=(min(256, len(trajectory)), *trajectory.shape[1:]),
                          **array_options())
        root.create_array("timesteps", data=timesteps, **array_options())
        seal(root)
    return trajectory


def read_trajectory(path: str, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x̂₀ rows [start, stop) as (n, S, C, H, W) float32, the S timesteps) of a trajectory store; a
    missing store or array or a damaged chunk raises :class:`diffattr.integrity.StoreError` in one sentence."""
    from pathlib import Path

    from diffattr.integrity import StoreError, missing_advice, open_store, read_array, require_arrays

    if not Path(path).exists():
        raise StoreError(f"Trajectory store '{path}' does not exist; {missing_advice(path)}.")
    root = open_store(path)
    require_arrays(path, root, ("x0", "timesteps"))
    return read_array(path, root["x0"], slice(start, stop), "x0"), read_array(path, root["timesteps"], slice(None), "timesteps")
