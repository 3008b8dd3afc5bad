"""AbC-style customization benchmark (Wang et al., ICCV 2023; docs/methods.md §2.16).

Ground truth by construction: the trained text-to-image model is customized on a few exemplar images
— its LoRA fine-tuned further on them, under a prompt of its own (Custom Diffusion's "V* {class}", here
"a sks digit {label}": ``sks`` is the rare token of DreamBooth-style customization) — and the images it
then synthesizes from that prompt are attributable to those exemplars. An attribution method is
scored by how well it retrieves a synthesized image's own exemplars among the candidates: the whole
fine-tuning (training) set plus every group's exemplars (§2.16: "rank the exemplar(s) among 1M LAION
images plus the exemplars").

- Exemplar groups: ``groups`` groups of ``exemplars`` images from the held-out ``val`` split, group g
  drawn from one class (a seeded permutation of the classes; groups ≤ classes), so no exemplar is a
  training image.
- Customization: from the full model's checkpoint, ``steps`` optimiser steps of the one training loop
  (:func:`diffattr.train.train`) on the group's exemplars under the group's prompt; then ``images``
  DDIM samples (the ``generate`` block's sampler) from seeds 10⁶·(g+1) + i.
- Attribution score (§2.16): cosine similarity of embeddings — ``pixel`` (the image in [−1, 1]) and
  ``latent`` (the base VAE's latent, the text-to-image model's own encoder).
- Metrics per synthesized image (§2.16): Recall@k = |exemplars among the top k| / |exemplars|, and
  average precision AP = (1/|R|) Σ_{r∈R} precision@rank(r); the table reports their means (mAP).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

ENCODERS = ("pixel", "latent")


@dataclass(frozen=True)
class CustomizationConfig:
    """The ``customization`` block of the config."""

    groups: int = 4
    exemplars: int = 4
    images: int = 8
    prompt: str = "a sks digit {label}"
    steps: int = 100
    lr: float = 1e-3
    seed: int = 0
    encoders: tuple[str, ...] = ENCODERS
    ks: tuple[int, ...] = (5, 10, 100)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> CustomizationConfig:
        from diffattr.methods.registry import method_settings

        cfg = method_settings(cls, cfg, "customization")
        for key in ("encoders", "ks"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        bad = sorted(set(cfg.get("encoders", ())) - set(ENCODERS))
        if bad:
            raise ValueError(f"unknown customization encoders {bad}; choose from {ENCODERS}")
        return cls(**cfg)


def exemplar_rows(labels: np.ndarray, groups: int, exemplars: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (groups, exemplars) of the val split, the groups' classes (groups,)): group g takes
    ``exemplars`` images of class perm[g], perm a permutation of the classes seeded by ``seed``."""
    classes = np.unique(labels)
    if groups > len(classes):
        raise ValueError(f"{groups} exemplar groups need as many classes, the val split has {len(classes)}")
    rng = np.random.default_rng([seed, 0])
    chosen = rng.permutation(classes)[:groups]
    rows = []
    for c in chosen:
        members = np.flatnonzero(labels == c)
        if len(members) < exemplars:
            raise ValueError(f"class {c} has {len(members)} val images, fewer than {exemplars} exemplars")
        rows.append(np.sort(rng.choice(members, size=exemplars, replace=False)))
    return np.stack(rows), chosen


def group_seeds(group: int, count: int) -> np.ndarray:
    """Initial-noise seeds of group g's synthesized images: 10⁶·(g+1) + i (distinct from ``generate``'s)."""
    return 10**6 * (group + 1) + np.arange(count, dtype=np.int64)


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """(Q, len(ks)): the share of each query's relevant candidates among its top k by score (ties
    broken by candidate index)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    total = relevant.sum(axis=1)
    if (total == 0).any():
        raise ValueError("every query needs at least one relevant candidate")
    return np.stack([hits[:, :k].sum(axis=1) / total for k in ks], axis=1)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(Q,): AP = (1/|R|) Σ_{r∈R} (relevant among the top rank(r)) / rank(r), ranks by decreasing score."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1).astype(np.float64)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    return (precision * hits).sum(axis=1) / hits.sum(axis=1)


def cosine_scores(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(Q, C) cosine similarity of flattened embeddings."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    c = candidates.reshape(len(candidates), -1).astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    c /= np.linalg.norm(c, axis=1, keepdims=True).clip(1e-12)
    return q @ c.T


def customize_group(data_store: str, full_checkpoint: str, params: dict[str, Any], group: int, checkpoint: str,
                    images_store: str, log_table: str, resume_dir: str, device: str = "cpu") -> np.ndarray:
    """customize: fine-tune the full model's LoRA on group ``group``'s exemplars under its prompt,
    save the customized LoRA, and synthesize the group's images from that prompt (uint8, stored with
    their prompt as caption). ``params``: the model's params, ``customization`` and ``generate``."""
    from diffattr.data import ImageSet
    from diffattr.data.store import read_class_names, read_images, read_labels, to_uint8, write_image_store
    from diffattr.models.family import load_model
    from diffattr.sample import ddim_trajectory, generate_config
    from diffattr.train import train

    cfg = CustomizationConfig.from_dict(params["customization"])
    labels = read_labels(data_store, "val")
    rows, classes = exemplar_rows(labels, cfg.groups, cfg.exemplars, cfg.seed)
    names = read_class_names(data_store, "val")
    prompt = cfg.prompt.format(label=names[int(classes[group])].replace("_", " "))
    model = load_model(full_checkpoint, params, device)
    inputs = model.to_inputs(read_images(data_store, "val")[rows[group]])
    recipe = {"steps": cfg.steps, "batch_size": cfg.exemplars, "lr": cfg.lr, "checkpoint_fractions": [1.0],
              "resume_every": cfg.steps, "log_every": max(1, cfg.steps // 4)}
    train(model, inputs, model.condition([prompt] * len(inputs)), recipe, cfg.seed + group, [checkpoint], log_table,
          resume_dir)
    gen = generate_config(params["generate"])
    seeds = group_seeds(group, cfg.images)
    images = to_uint8(ddim_trajectory(model.network, params["scheduler"], seeds, gen.steps, gen.eta, gen.batch_size,
                                      device, record=False, cond=model.condition([prompt] * cfg.images),
                                      to_images=model.to_images)[0])
    write_image_store(images_store, {"gen": ImageSet(images, np.full(len(images), int(classes[group])),
                                                     [f"ddim:seed{s}" for s in seeds], names, [prompt] * len(images))})
    log.info("customized group %d (%s) on val rows %s; synthesized %d images", group, prompt, rows[group].tolist(),
             len(images))
    return images


def evaluate_customization(data_store: str, group_stores: list[str], params: dict[str, Any], table_path: str,
                           summary_path: str, device: str = "cpu") -> pd.DataFrame:
    """customization_eval: for every synthesized image and encoder, Recall@k and AP of its group's
    exemplars among (training set + all exemplars); one row per (encoder, group, image), and the
    per-encoder means as a markdown table."""
    from diffattr.atomic import atomic_path
    from diffattr.data.store import read_images, read_labels, to_model_range

    cfg = CustomizationConfig.from_dict(params["customization"])
    rows, _ = exemplar_rows(read_labels(data_store, "val"), cfg.groups, cfg.exemplars, cfg.seed)
    candidates = np.concatenate([read_images(data_store, "train"), read_images(data_store, "val")[rows.reshape(-1)]])
    n_train = len(candidates) - rows.size
    synthesized = [read_images(store, "gen") for store in group_stores]
    queries = np.concatenate(synthesized)
    query_group = np.repeat(np.arange(len(synthesized)), [len(s) for s in synthesized])
    candidate_group = np.concatenate([np.full(n_train, -1), np.repeat(np.arange(cfg.groups), cfg.exemplars)])
    relevant = query_group[:, None] == candidate_group[None, :]
    encoders = {"pixel": to_model_range}
    if "latent" in cfg.encoders:
        from diffattr.models.family import fresh_model

        encoders["latent"] = fresh_model(params, 0, device).to_inputs
    frames = []
    for name in cfg.encoders:
        scores = cosine_scores(encoders[name](queries), encoders[name](candidates))
        recall = recall_at_k(scores, relevant, cfg.ks)
        frame = pd.DataFrame({"encoder": name, "group": query_group, "image": np.arange(len(queries)),
                              "ap": average_precision(scores, relevant)})
        for j, k in enumerate(cfg.ks):
            frame[f"recall@{k}"] = recall[:, j]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    summary = table.drop(columns=["group", "image"]).groupby("encoder", sort=False).mean()
    lines = ["| encoder | " + " | ".join(f"Recall@{k}" for k in cfg.ks) + " | mAP |",
             "|---" * (len(cfg.ks) + 2) + "|"]
    for name, row in summary.iterrows():
        cells = " | ".join(f"{row[f'recall@{k}']:.3f}" for k in cfg.ks)
        lines.append(f"| {name} | {cells} | {row['ap']:.3f} |")
    note = (f"\n{len(queries)} synthesized images ({cfg.groups} groups × {cfg.images}), each ranking its "
            f"{cfg.exemplars} exemplars among {len(candidates)} candidates ({n_train} training images + "
            f"{rows.size} exemplars).\n")
    with atomic_path(summary_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n" + note)
    return table
