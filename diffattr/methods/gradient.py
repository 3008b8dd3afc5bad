"""Gradient-similarity methods over stored features, without a kernel (docs/methods.md §2.3, §2.4, §2.7).

With φ_c(·) the projected gradient features at checkpoint c (one feature spec per checkpoint) and
weights w_c:

- Grad-dot / Grad-cos (Charpiat et al., §2.3): one spec (the final checkpoint),
  τ(x, z) = φ(x)ᵀφ(z) or φ(x)ᵀφ(z) / (‖φ(x)‖‖φ(z)‖).
- TracIn (TracInCP, §2.4): τ(x, z) = Σ_c w_c · φ_c(x)ᵀφ_c(z) over the saved checkpoints. D-TRAK's
  diffusion version uses equal weights w_c = 1/C (``weighting: equal``); the original uses the
  learning rate η_c (``weighting: learning_rate``).
- TracIn-cosine and GAS (Hammoudeh & Lowd, §2.7): the same sum over cosines; GAS weights by η_c / b,
  which ranks like η_c (the batch size b is one constant per run), so GAS is
  ``similarity: cosine, weighting: learning_rate``.

η_c is the mean learning rate over the optimizer steps since the previous checkpoint (the interval
the checkpoint stands for): the cosine schedule ends at 0, so the rate at the checkpoint step
itself would silence the final checkpoint. The weights are computed at DAG time
(:func:`checkpoint_weights`, torch-free) and reach the scorer as the method's ``weights`` param.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffattr.methods.registry import ScoreBlocks, ScoreContext
from diffattr.schedule import learning_rate
from diffattr.store import FeatureStore


@dataclass(frozen=True)
class GradientSettings:
    """A ``gradient`` method block: its feature spec(s), one per checkpoint; ``similarity`` dot or
    cosine; ``weighting`` equal or learning_rate; and ``weights``, derived at DAG time
    (:func:`derived_params`)."""

    features: str | list[str]
    similarity: str
    weighting: str
    weights: tuple[float, ...] = ()


def derived_params(plan: Any, name: str) -> dict[str, Any]:
    """What the DAG adds to a gradient method's params: its checkpoints' ``weights`` (from the
    training recipe and the steps of its feature specs)."""
    train = plan.config["train"]
    steps = [plan.feature_step(spec) for spec in plan.method_specs(name)]
    weighting = plan.method(name)["weighting"]
    return {"weights": checkpoint_weights(steps, weighting, train["steps"], train["lr"], train["warmup_fraction"])}


def checkpoint_weights(steps_at: Sequence[int], weighting: str, steps: int, lr: float, warmup_fraction: float) -> list[float]:
    """w_c per checkpoint step: 1/C (``equal``) or the interval's mean learning rate (``learning_rate``)."""
    if weighting == "equal":
        return [1.0 / len(steps_at)] * len(steps_at)
    bounds = [0, *sorted(steps_at)]
    mean_lr = {
        stop: float(np.mean([learning_rate(s, steps, lr, warmup_fraction) for s in range(start, stop)]))
        for start, stop in zip(bounds[:-1], bounds[1:])
    }
    return [mean_lr[s] for s in steps_at]


def _unit_rows(features: np.ndarray) -> np.ndarray:
    return features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-30)


def gradient_scores(ctx: ScoreContext) -> ScoreBlocks:
    """Σ_c w_c sim(φ_c(x), φ_c(z)); inputs ``train`` and ``queries``, one per checkpoint spec c."""
    settings = GradientSettings(**ctx.settings)
    weights, cosine = settings.weights, settings.similarity == "cosine"
    if not len(weights) == len(ctx.inputs.train) == len(ctx.inputs.queries):
        raise ValueError(f"{len(weights)} checkpoint weights for {len(ctx.inputs.train)} train and "
                         f"{len(ctx.inputs.queries)} query feature stores")
    train = [FeatureStore(path).read() for path in ctx.inputs.train]
    queries = [FeatureStore(path) for path in ctx.inputs.queries]
    if cosine:
        train = [_unit_rows(t) for t in train]

    def block(start: int, stop: int) -> np.ndarray:
        total = np.zeros((stop - start, train[0].shape[0]))
        for w, t, q in zip(weights, train, queries):
            x = q.read(start, stop)
            total += w * ((_unit_rows(x) if cosine else x) @ t.T)
        return total

    return ScoreBlocks(queries[0].shape[0], train[0].shape[0], block, {"weights": list(weights)})
