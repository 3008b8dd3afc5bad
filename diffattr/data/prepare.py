"""prepare_data: class filtering and stratified sampling into the train set and the attributed
("val") set, written to the image store plus a pandas metadata table (docs/methods.md §4.1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from diffattr.atomic import atomic_path
from diffattr.data import ImageSet, load_source
from diffattr.data.settings import DataConfig  # re-exported: `from diffattr.data.prepare import DataConfig`
from diffattr.data.store import write_image_store


def filter_classes(data: ImageSet, classes: list[str] | None) -> ImageSet:
    """Keep the named classes (by name, or by integer label written as a string), relabelled 0..C−1
    in the order given (CIFAR-2 = ["automobile", "horse"])."""
    if not classes:
        return data
    lookup = {name: i for i, name in enumerate(data.class_names)}
    wanted = []
    for c in classes:
        if str(c) in lookup:
            wanted.append(lookup[str(c)])
        elif str(c).isdigit() and int(c) < len(data.class_names):
            wanted.append(int(c))
        else:
            raise ValueError(f"data.classes names {c!r}, which is not a class of the data ({data.class_names})")
    rows = np.flatnonzero(np.isin(data.labels, wanted))
    relabel = {old: new for new, old in enumerate(wanted)}
    kept = data.take(rows)
    labels = np.asarray([relabel[int(v)] for v in kept.labels], dtype=np.int64)
    return ImageSet(kept.images, labels, kept.sources, [data.class_names[i] for i in wanted], kept.captions)


def stratified_rows(labels: np.ndarray, size: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rest) row indices, sorted: a class-stratified sample of ``size`` rows
    (``train_test_split(..., stratify=labels, random_state=seed)``, as D-TRAK does)."""
    rows = np.arange(len(labels))
    if size == 0:  # an attribute run over a flat folder: every image trains, none is held out
        return rows[:0], rows
    if size is None or size == len(labels):
        return rows, rows[:0]
    if size > len(labels):
        raise ValueError(f"asked for {size} samples but only {len(labels)} are available")
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    chosen, rest = train_test_split(rows, train_size=size, stratify=stratify, random_state=seed)
    return np.sort(chosen), np.sort(rest)


STYLES = ("invert",)


def restyle(data: ImageSet, style: str | None) -> ImageSet:
    """The images in a style: ``invert`` maps x to 255 − x (a distinct, exactly known look for the
    text-to-image default's fine-tuning set); None keeps them."""
    if style is None:
        return data
    if style not in STYLES:
        raise ValueError(f"unknown data.style {style!r}; choose one of {STYLES}")
    return ImageSet(255 - data.images, data.labels, [f"{s}|{style}" for s in data.sources], data.class_names,
                    data.captions)


def split_sets(pools: dict[str, ImageSet], cfg: DataConfig) -> dict[str, ImageSet]:
    """``{"train": ..., "val": ...}`` from a source's pools, plus ``"base"`` — ``n_base`` stratified
    images held out of the training pool, unstyled, for a text-to-image base pipeline's pretraining —
    when ``n_base`` is set; train and val are restyled by ``style``."""
    pools = {name: filter_classes(pool, cfg.classes) for name, pool in pools.items()}
    if "all" in pools:
        everything = pools["all"]
        val_rows, rest = stratified_rows(everything.labels, cfg.n_attributed, cfg.split_seed)
        pool, val = everything.take(rest), everything.take(val_rows)
    else:
        val_rows, _ = stratified_rows(pools["test"].labels, cfg.n_attributed, cfg.split_seed)
        pool, val = pools["train"], pools["test"].take(val_rows)
    sets = {}
    if cfg.n_base:
        base_rows, rest = stratified_rows(pool.labels, cfg.n_base, cfg.split_seed)
        sets["base"], pool = pool.take(base_rows), pool.take(rest)
    train_rows, _ = stratified_rows(pool.labels, cfg.n_train, cfg.split_seed)
    return {"train": restyle(pool.take(train_rows), cfg.style), "val": restyle(val, cfg.style), **sets}


def metadata_table(sets: dict[str, ImageSet]) -> pd.DataFrame:
    """One row per image: split, index within the split, label, class name, source, and caption
    when any split has captions (empty for the images without)."""
    frames = [
        pd.DataFrame(
            {
                "split": split,
                "index": np.arange(len(data.labels)),
                "label": data.labels,
                "class_name": [data.class_names[i] for i in data.labels],
                "source": data.sources,
                **({} if data.captions is None else {"caption": data.captions}),
            }
        )
        for split, data in sets.items()
    ]
    return pd.concat(frames, ignore_index=True)


def prepare(data_config: dict[str, Any], store_path: str, table_path: str) -> dict[str, ImageSet]:
    """Load, filter and split the configured source; write the image store and metadata table."""
    cfg = DataConfig.from_dict(data_config)
    sets = split_sets(load_source(cfg.source, cfg.path, cfg.resolution, cfg.color), cfg)
    write_image_store(store_path, sets)
    with atomic_path(table_path) as tmp:
        metadata_table(sets).to_csv(tmp, index=False)
    return sets
