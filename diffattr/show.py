"""Show one attribution: the training images most and least responsible for one attributed sample.

For an attributed sample x (row ``sample`` of a score store ``scores/{method}/{set}.zarr``) and
every training image z, the store holds a raw score τ(x, z) and, in its attrs, the method's LDS
sign s (docs/methods.md §0, §4.4; :mod:`diffattr.methods.registry`). The LDS predicts the loss of a
model trained on a subset S at x as Σ_{z∈S} s·τ(x, z): including z changes x's loss by s·τ. So

    responsibility(x, z) = −s·τ(x, z)

(:func:`diffattr.scores.responsibility`, the one place this convention is written) is how much
including z *lowers* x's loss:

- s = −1 (``HELPS``: TRAK family, similarity, TracIn, influence): responsibility = τ, a larger score
  means z helps x more;
- s = +1 (``LOSS_UNITS``: empirical influence, datamodels, encoded ensembles): τ is the change in
  x's loss when z is included, so responsibility = −τ and the most negative scores are the most
  responsible.

*Proponents* are the top-k training images by responsibility (most responsible first),
*opponents* the bottom-k (least responsible, i.e. most loss-raising, first). Ties keep the lower
training index first. :func:`show_attribution` prints both as a table and draws them as a PNG grid
(matplotlib's Agg canvas; no pyplot state): the attributed sample on the left, proponents on the top
row, opponents on the bottom row, each tile titled with its training index and raw score. A damaged
score or image store (truncated or garbled chunk, :mod:`diffattr.integrity`) is one :class:`ShowError`
sentence naming the store and the rule that rebuilds it, not a codec traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.integrity import SEAL, StoreError, read_array, reading
from diffattr.plots import DPI, new_figure, save_png  # DPI: the grid's pixels per inch of grid_figsize
from diffattr.scores import ScoreSignError, open_score_store, responsibility  # responsibility: the LDS sign convention
from diffattr.workflow.layout import ATTRIBUTED_SETS, Layout


class ShowError(ValueError):
    """A problem with the requested attribution, stated in one sentence."""


@dataclass(frozen=True)
class Ranked:
    """Training images in display order: their indices, raw scores and 1-based overall rank by
    responsibility (rank 1 = most responsible, rank N = least)."""

    index: np.ndarray
    score: np.ndarray
    rank: np.ndarray


def rank_training(scores: np.ndarray, sign: int, k: int) -> tuple[Ranked, Ranked]:
    """(proponents, opponents) of one score row: the ``k`` training images with the highest
    responsibility, most responsible first, and the ``k`` with the lowest, least responsible first
    (``k`` is capped at the number of training images; ties keep the lower index first)."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ShowError(f"A score row must be one-dimensional, got shape {scores.shape}.")
    if k < 1:
        raise ShowError(f"--top must be at least 1, got {k}.")
    n = len(scores)
    k = min(k, n)
    try:
        resp = responsibility(scores, sign)
    except ScoreSignError as err:
        raise ShowError(str(err)) from err
    order = np.argsort(-resp, kind="stable")  # most responsible first
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(1, n + 1)
    top = order[:k]
    bottom = np.argsort(resp, kind="stable")[:k]  # least responsible first
    return (Ranked(top, scores[top], ranks[top]), Ranked(bottom, scores[bottom], ranks[bottom]))


def sign_phrase(sign: int) -> str:
    """What a raw score means for a store of sign ``sign``, in words."""
    if sign == -1:
        return "sign -1: a larger score means the training image lowers the sample's loss more"
    return "sign +1: the score is the change in the sample's loss when the training image is included, more negative = more responsible"


def label_text(label: int, class_names: list[str] | None) -> str:
    """A label as printed: its class name when it differs from the integer, else the integer."""
    label = int(label)
    if class_names and 0 <= label < len(class_names) and str(class_names[label]) != str(label):
        return f"{label} ({class_names[label]})"
    return str(label)


def format_table(title: str, ranked: Ranked, labels: np.ndarray, class_names: list[str] | None = None) -> str:
    """A fixed-width table (rank, train index, label, score) under ``title``."""
    rows = [(str(r), str(i), label_text(labels[i], class_names), f"{s:.6g}")
            for r, i, s in zip(ranked.rank, ranked.index, ranked.score)]
    head = ("rank", "train", "label", "score")
    widths = [max(len(h), *(len(row[c]) for row in rows)) if rows else len(h) for c, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([title, fmt.format(*head), *(fmt.format(*row) for row in rows)])


def grid_figsize(k: int) -> tuple[float, float]:
    """Figure size in inches of a grid with ``k`` tiles per row (the PNG is this × :data:`DPI`)."""
    return (1.1 * (k + 2.4), 3.6)


def _show(ax: Any, image: np.ndarray, title: str) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_grid(path: str | os.PathLike, sample_image: np.ndarray, sample_title: str,
              proponents: Ranked, opponents: Ranked, train_images: dict[int, np.ndarray],
              suptitle: str = "") -> Path:
    """Write the PNG grid to ``path`` (atomically): ``sample_image`` (H, W, C) uint8 on the left,
    ``proponents`` on the top row and ``opponents`` on the bottom row, each tile from
    ``train_images[index]`` titled with its training index and raw score."""
    k = max(len(proponents.index), len(opponents.index))
    fig = new_figure(*grid_figsize(k), layout=None)
    grid = fig.add_gridspec(2, k + 2, width_ratios=[2.0, 0.3] + [1.0] * k,
                            left=0.02, right=0.98, bottom=0.04, top=0.82, hspace=0.45, wspace=0.15)
    _show(fig.add_subplot(grid[:, 0]), sample_image, sample_title)
    for row, (name, ranked) in enumerate((("proponents", proponents), ("opponents", opponents))):
        for col, (index, score) in enumerate(zip(ranked.index, ranked.score)):
            ax = fig.add_subplot(grid[row, col + 2])
            _show(ax, train_images[int(index)], f"#{int(index)}\n{float(score):.3g}")
            if col == 0:
                ax.set_ylabel(name, fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
    return save_png(fig, path)


def _open_split(store: Path, split: str, what: str) -> Any:
    from diffattr.data.store import open_split

    if not store.exists():
        raise ShowError(f"No image store at {store}: the {what} must be produced first (e.g. `diffattr run`).")
    try:
        return open_split(store, split)
    except KeyError:
        raise ShowError(f"The image store {store} has no split {split!r}, so it holds no {what}.") from None


def read_score_row(path: str | os.PathLike, sample: int) -> tuple[np.ndarray, dict[str, Any], tuple[int, int]]:
    """(row ``sample`` of the score store at ``path``, the store's attrs, its shape); a damaged
    store raises :class:`diffattr.integrity.StoreError`."""
    path = Path(path)
    root = open_score_store(path)
    scores = root["scores"]
    n_queries, n_train = scores.shape
    if not 0 <= sample < n_queries:
        raise ShowError(f"Sample {sample} is out of range: {path} has {n_queries} attributed samples (0 to {n_queries - 1}).")
    attrs = {k: v for k, v in root.attrs.items() if k != SEAL}
    return read_array(path, scores, sample, "scores"), attrs, (n_queries, n_train)


@dataclass(frozen=True)
class Shown:
    """What :func:`show_attribution` produced: the printed table and the PNG's path."""

    table: str
    png: Path
    proponents: Ranked
    opponents: Ranked


def show_attribution(output_dir: str | os.PathLike, method: str, query_set: str, sample: int, k: int = 10,
                     png: str | os.PathLike | None = None, configured_methods: list[str] | None = None) -> Shown:
    """Rank the training images for attributed sample ``sample`` of ``query_set`` by ``method``'s
    scores under ``output_dir``, and draw them (default PNG:
    ``{output_dir}/attribution/{method}_{query_set}_{sample}.png``). Raises :class:`ShowError`
    with one sentence for a missing store, an out-of-range sample or inconsistent stores."""
    layout = Layout(os.fspath(output_dir))
    if query_set not in ATTRIBUTED_SETS:
        raise ShowError(f"Unknown set {query_set!r}: scores are written for the attributed sets 'val' and 'gen' only.")
    score_path = Path(layout.scores.format(method=method, set=query_set))
    if not score_path.exists():
        if configured_methods is not None and method not in configured_methods:
            raise ShowError(f"Unknown method {method!r}: there is no score store at {score_path} and the config names "
                            f"only {', '.join(configured_methods)}; add it and run it first (e.g. `diffattr run`).")
        raise ShowError(f"No score store at {score_path}: method {method!r} must be run on set {query_set!r} "
                        "first (e.g. `diffattr run`).")
    if png is None:
        png = layout.attribution_png.format(method=method, set=query_set, sample=sample)
    # an image store holds an attributed set under the set's own name
    return draw_attribution(score_path, Path(layout.data), Path(layout.image_store(query_set)), query_set, method,
                            query_set, sample, k, Path(png))


def draw_attribution(score_path: str | os.PathLike, train_store: str | os.PathLike,
                     attributed_store: str | os.PathLike, split: str, method: str, query_set: str, sample: int,
                     k: int, png: str | os.PathLike) -> Shown:
    """:func:`show_attribution` on explicit stores: row ``sample`` of the score store, the training
    images of ``train_store`` and the attributed images of ``split`` in ``attributed_store``. A
    damaged store is a :class:`ShowError` with the store's one sentence."""
    try:
        return _draw_attribution(Path(score_path), Path(train_store), Path(attributed_store), split, method, query_set,
                                 sample, k, png)
    except StoreError as err:
        raise ShowError(str(err)) from err


def _draw_attribution(score_path: Path, train_store: Path, attributed_store: Path, split: str, method: str,
                      query_set: str, sample: int, k: int, png: str | os.PathLike) -> Shown:
    if k < 1:
        raise ShowError(f"--top must be at least 1, got {k}.")
    row, attrs, (n_queries, n_train) = read_score_row(score_path, sample)
    if "sign" not in attrs:
        raise ShowError(f"The score store {score_path} has no 'sign' attribute, so its ranking direction is unknown.")
    sign = int(attrs["sign"])
    proponents, opponents = rank_training(row, sign, k)

    train = _open_split(train_store, "train", "training images")
    if train["images"].shape[0] != n_train:
        raise ShowError(f"The score store {score_path} has {n_train} training columns but "
                        f"{train_store} holds {train['images'].shape[0]} training images.")
    attributed = _open_split(attributed_store, split, f"{query_set!r} attributed images")
    if attributed["images"].shape[0] != n_queries:
        raise ShowError(f"The score store {score_path} has {n_queries} rows but {attributed_store} holds "
                        f"{attributed['images'].shape[0]} {query_set!r} images.")
    labels = read_array(train_store, train["labels"], slice(None), "train/labels")
    class_names = list(train.attrs.get("class_names", []) or [])
    wanted = np.unique(np.concatenate([proponents.index, opponents.index]))
    with reading(train_store, train["images"], "train/images"):
        tiles = dict(zip(wanted.tolist(), np.asarray(train["images"].get_orthogonal_selection((wanted,)))))
    sample_image = read_array(attributed_store, attributed["images"], sample, f"{split}/images")
    sample_label = int(read_array(attributed_store, attributed["labels"], sample, f"{split}/labels"))

    what = f"{method} on {query_set} sample {sample}" + (
        f" (label {label_text(sample_label, class_names)})" if sample_label >= 0 else "")
    table = "\n\n".join([
        f"{what}; {sign_phrase(sign)}.",
        format_table(f"Top {len(proponents.index)} proponents (most responsible first):", proponents, labels, class_names),
        format_table(f"Bottom {len(opponents.index)} opponents (least responsible first):", opponents, labels, class_names),
    ])
    sample_title = f"{query_set} #{sample}" + (f"\nlabel {label_text(sample_label, class_names)}" if sample_label >= 0 else "")
    draw_grid(png, sample_image, sample_title, proponents, opponents, tiles,
              suptitle=f"{method}: top row = {len(proponents.index)} most responsible training images, "
                       f"bottom row = {len(opponents.index)} least (raw score, sign {sign:+d})")
    return Shown(table, Path(png), proponents, opponents)
