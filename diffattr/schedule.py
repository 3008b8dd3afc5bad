"""Training schedule as pure functions of the config: no torch, so the DAG can use them.

docs/methods.md §3: AdamW, cosine learning rate with linear warm-up (10 % of the steps by default),
gradient clipping. Checkpoints are saved at configured fractions of training (TracIn, §2.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def checkpoint_steps(steps: int, fractions: Sequence[float]) -> list[int]:
    """Optimizer steps at which checkpoints are saved; always includes the final step."""
    chosen = {max(1, round(f * steps)) for f in fractions} | {steps}
    return sorted(chosen)


def learning_rate(step: int, steps: int, lr: float, warmup_fraction: float) -> float:
    """Cosine schedule with linear warm-up, evaluated before optimizer step ``step`` (0-based)."""
    warmup = int(round(warmup_fraction * steps))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
