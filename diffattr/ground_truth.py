"""LDS ground truth (docs/methods.md §4.3): the (noise seed, t) pairs, per-model measurement files,
the gathered (subsets × attributed) matrix averaged over pairs and training seeds, and its
split-half reliability. Torch-free; the measuring itself is :mod:`diffattr.measure`. Both kinds of
store are read checked (:mod:`diffattr.integrity`): damage is one sentence naming the store and
the rule that rebuilds it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr

from diffattr.atomic import atomic_path
from diffattr.spearman import spearman_per_column
from diffattr.integrity import StoreError, array_options, missing_advice, open_store, read_array, require_arrays, seal
from diffattr.noise import timestep_set


@dataclass(frozen=True)
class GroundTruthConfig:
    """The ``ground_truth`` block: timesteps × noise seeds define the (seed, t) pairs. ``timesteps``
    and ``noise_seeds`` are required (by the schema too); the optional keys' defaults live here."""

    timesteps: int
    noise_seeds: tuple[int, ...]
    timestep_strategy: str = "uniform"
    batch_size: int = 256
    models_per_job: int = 4
    """Models one measure_outputs job measures (:meth:`diffattr.workflow.plan.Plan.measurement_parts`):
    fewer processes, each paying its start and imports once. A layout knob, like a feature spec's
    ``shard_size``: it changes no number, but changing it moves (so re-measures) every measurement."""

    @classmethod
    def from_dict(cls, cfg: dict) -> GroundTruthConfig:
        """The block as settings (``noise_seeds`` as a tuple)."""
        cfg = dict(cfg)
        cfg["noise_seeds"] = tuple(cfg["noise_seeds"])
        return cls(**cfg)

    def pairs(self, num_train_timesteps: int) -> np.ndarray:
        """(P, 2) int array of (noise seed, t)."""
        ts = timestep_set(self.timestep_strategy, self.timesteps, num_train_timesteps)
        return np.asarray([(s, int(t)) for s in self.noise_seeds for t in ts], dtype=np.int64)


def write_measurement(path: str | os.PathLike, losses: dict[str, np.ndarray], pairs: np.ndarray,
                      attrs: dict | None = None) -> None:
    """One model's measurement: ``{set}/losses`` (P, n) per attributed set, pairs (and ``attrs``) in attrs."""
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"pairs": pairs.tolist(), **(attrs or {})})
        for name, value in losses.items():
            root.create_array(f"{name}/losses", data=value, **array_options())
        seal(root)


def read_checked(path: str | os.PathLike, name: str) -> np.ndarray:
    """The whole array ``name`` of the store at ``path``, checked: a missing store, array or chunk
    or an undecodable chunk raises :class:`StoreError` in one sentence."""
    if not os.path.exists(path):
        raise StoreError(f"Ground-truth store '{path}' does not exist; {missing_advice(path)}.")
    root = open_store(path)
    require_arrays(path, root, (name,))
    return read_array(path, root[name], slice(None), name)


def read_measurement(path: str | os.PathLike, split: str) -> np.ndarray:
    """One model's (P, n) losses on ``split`` (:func:`write_measurement`)."""
    return read_checked(path, f"{split}/losses")


def gather(paths: dict[tuple[int, int], str], sets: Sequence[str], out_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Stack per-model measurements into ``{set}/y`` (seeds, subsets, n) of pair-averaged losses
    and ``{set}/losses`` (seeds, subsets, P, n); keys of ``paths`` are (subset, seed)."""
    subsets = sorted({k for k, _ in paths})
    seeds = sorted({s for _, s in paths})
    if set(paths) != {(k, s) for k in subsets for s in seeds}:
        raise ValueError("ground-truth measurements do not cover every (subset, seed) pair")
    result = {}
    with atomic_path(out_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"subsets": subsets, "seeds": seeds})
        for split in sets:
            losses = np.stack([np.stack([read_measurement(paths[(k, s)], split) for k in subsets]) for s in seeds])
            root.create_array(f"{split}/losses", data=losses, **array_options())
            root.create_array(f"{split}/y", data=losses.mean(axis=2), **array_options())
            result[split] = losses
        seal(root)
    return result


def read_ground_truth(path: str | os.PathLike, split: str) -> np.ndarray:
    """(subsets, n) ground truth: pair-averaged loss, averaged over training seeds."""
    return read_checked(path, f"{split}/y").mean(axis=0)


def split_half_reliability(losses: np.ndarray) -> tuple[float, str]:
    """Mean over queries of the Spearman correlation across subsets between two halves of the
    ground truth: the ceiling of any LDS (Mlodozeniec et al.'s seed-to-seed correlation, §4.4).

    ``losses`` is (seeds, subsets, P, n). With ≥ 2 training seeds the halves are alternate seeds;
    with one seed they are alternate (noise seed, t) pairs (which omits training-seed noise).
    """
    per_query, how = split_half_correlations(losses)
    return float(np.nanmean(per_query)), how


def split_half_correlations(losses: np.ndarray) -> tuple[np.ndarray, str]:
    """Per query, the Spearman correlation of :func:`split_half_reliability`'s two halves (NaN where
    a half is constant across subsets), and which halves were used."""
    if losses.shape[0] >= 2:
        a, b = losses[0::2].mean(axis=(0, 2)), losses[1::2].mean(axis=(0, 2))
        how = "training seeds"
    else:
        a, b = losses[0, :, 0::2].mean(axis=1), losses[0, :, 1::2].mean(axis=1)
        how = "(noise seed, t) pairs"
    return spearman_per_column(a, b), how


def reliability_table(losses_by_set: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per set: the split-half reliability (mean over the queries with a defined correlation), the
    halves used, the sizes, and ``n_undefined`` (measured queries left out of the mean)."""
    rows = []
    for split, losses in losses_by_set.items():
        per_query, how = split_half_correlations(losses)
        rows.append({"set": split, "split_half": float(np.nanmean(per_query)), "halves": how,
                     "n_subsets": losses.shape[1], "n_seeds": losses.shape[0], "n_pairs": losses.shape[2],
                     "n_queries": losses.shape[3], "n_undefined": int(np.isnan(per_query).sum())})
    return pd.DataFrame(rows)


def gather_pool(paths: dict[tuple[int, int], str], sets: Sequence[str], out_path: str, reliability_path: str) -> pd.DataFrame:
    """gather_ground_truth: the pool's matrix and its split-half reliability table."""
    table = reliability_table(gather(paths, sets, out_path))
    with atomic_path(reliability_path) as tmp:
        table.to_csv(tmp, index=False)
    return table
