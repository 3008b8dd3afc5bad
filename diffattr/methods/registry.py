"""The method interface (DESIGN.md "One method interface").

A method is a name in the config's ``methods`` block whose ``kind`` names an entry here. The entry
declares what the method needs (artifact keys the Snakefile turns into input files), the sign its
scores carry in the LDS (docs/methods.md §0, §4.4) and the scorer: a function imported only when the job
runs (so the registry is torch-free) that maps (inputs, method params, query set) to
:class:`ScoreBlocks`, an (attributed × train) matrix produced one row block at a time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

HELPS = -1
"""Sign of scores where larger means "z helps x" (lowers its loss): TRAK family, similarity, TracIn."""
LOSS_UNITS = +1
"""Sign of scores expressed as a change in loss: empirical influence, datamodels."""


@dataclass(frozen=True)
class MethodKind:
    kind: str
    sign: int
    needs: tuple[str, ...]
    scorer: str
    description: str


@dataclass
class ScoreBlocks:
    """A score matrix (n_queries × n_train) computed by row blocks; ``attrs`` are recorded with it."""

    n_queries: int
    n_train: int
    block: Callable[[int, int], np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_matrix(cls, scores: np.ndarray, attrs: dict[str, Any] | None = None) -> ScoreBlocks:
        """A score matrix already in memory (methods that score all queries at once), served by row slices."""
        return cls(scores.shape[0], scores.shape[1], lambda start, stop: scores[start:stop], dict(attrs or {}))


KINDS: dict[str, MethodKind] = {
    "pixel": MethodKind("pixel", HELPS, ("data", "generated"), "diffattr.methods.similarity:pixel_scores",
                        "Raw-pixel similarity: dot, cosine or negative squared L2 (docs/methods.md §2.1)"),
    "random": MethodKind("random", HELPS, ("data", "generated"), "diffattr.methods.similarity:random_scores",
                         "Seeded −U(0,1) control scores, LDS ≈ 0 (docs/methods.md §2.2)"),
    "trak": MethodKind("trak", HELPS, ("kernel_models",), "diffattr.methods.trak:trak_scores",
                       "TRAK / D-TRAK (feature spec's output: loss / square), single model or ensemble (§2.10, §2.11); "
                       "RelatIF, renormalised IF (normalize) and DAS (residual) (§2.6, §2.7, §2.13)"),
    "gradient": MethodKind("gradient", HELPS, ("feature_models",), "diffattr.methods.gradient:gradient_scores",
                           "Grad-dot / Grad-cos on one checkpoint, TracIn / GAS summed over checkpoints (§2.3, §2.4, §2.7)"),
    "retraining": MethodKind("retraining", LOSS_UNITS, ("retrain_truth",), "diffattr.methods.retraining:retraining_scores",
                             "Empirical influence or datamodels from the retrain pool's models (§2.14, §2.15)"),
    "influence": MethodKind("influence", HELPS, ("data", "generated", "full_model"),
                            "diffattr.methods.influence:influence_method_scores",
                            "Influence functions, exact / conjugate gradient / LiSSA Hessian-vector products (§2.8)"),
    "ekfac": MethodKind("ekfac", HELPS, ("data", "generated", "full_model"), "diffattr.methods.ekfac:ekfac_method_scores",
                        "K-FAC / EK-FAC influence on the full model, kronfluence as the engine (§2.9)"),
    "encoded": MethodKind("encoded", LOSS_UNITS, ("data", "generated", "encoded_models"),
                          "diffattr.methods.encoded:encoded_method_scores",
                          "Encoded ensemble (Dai & Gifford): full ensemble's L_Simple minus the complementary half's (§2.18)"),
    "unlearning": MethodKind("unlearning", HELPS, ("data", "generated", "full_model"),
                             "diffattr.methods.unlearning:unlearning_method_scores",
                             "Attribution by unlearning: Fisher-preconditioned ascent on x̂, score = loss change of z (§2.17)"),
    "embedding": MethodKind("embedding", HELPS, ("data", "generated", "full_model"),
                            "diffattr.methods.embedding:embedding_method_scores",
                            "Embedding similarity: a local CLIP vision model or the trained DDPM's UNet as encoder (§2.2)"),
}


def method_settings(settings: type, block: dict[str, Any], what: str) -> dict[str, Any]:
    """A method's config block as keyword arguments of its settings dataclass ``settings``:
    ``kind`` dropped, a key that is not a field refused in one sentence naming ``what``."""
    known = {f.name for f in fields(settings)}
    cfg = {k: v for k, v in block.items() if k != "kind"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; known: {sorted(known)}")
    return cfg


def method_kind(method_config: dict[str, Any]) -> MethodKind:
    try:
        return KINDS[method_config["kind"]]
    except KeyError:
        raise ValueError(f"unknown method kind {method_config.get('kind')!r}; known kinds: {sorted(KINDS)}") from None


def load_scorer(kind: MethodKind) -> Callable[[dict[str, str], dict[str, Any], str], ScoreBlocks]:
    module, name = kind.scorer.split(":")
    return getattr(importlib.import_module(module), name)


def score_method(method_config: dict[str, Any], inputs: dict[str, str], query_set: str, out_path: str,
                 block_rows: int = 256) -> ScoreBlocks:
    """score: run a method's scorer for one attributed set and write its scores by row blocks."""
    from diffattr.scores import write_scores

    kind = method_kind(method_config)
    blocks = load_scorer(kind)(inputs, method_config, query_set)
    attrs = {"method": method_config, "kind": kind.kind, "sign": kind.sign, "set": query_set, **blocks.attrs}
    write_scores(out_path, blocks.n_queries, blocks.n_train, blocks.block, block_rows, attrs)
    return blocks
