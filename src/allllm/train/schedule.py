"""Learning-rate schedules over one step-wise run.

Every run re-warms: the schedule is a pure function of the step *within the
run*, so a resumed run recomputes exactly the LR it would have had, and no
scheduler state needs to survive a crash. Warm-up is clamped to 10% of a short
run's steps (docs/design.md: config).
"""

from __future__ import annotations

import math

from allllm.config import TrainConfig


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    """Warm-up steps actually used: at most 10% of the run (at least 0)."""
    return max(0, min(warmup_steps, total_steps // 10))


def lr_at(step: int, total_steps: int, train: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a run of ``total_steps`` steps."""
    peak, floor = train.lr, train.min_lr
    total = max(1, total_steps)
    warmup = effective_warmup(train.warmup_steps, total)
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if train.schedule == "constant":
        return peak
    if train.schedule == "cosine":
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    # wsd: warm-up, stable at peak, then a linear decay over the last decay_fraction of the run
    decay_steps = max(1, round(total * train.decay_fraction))
    decay_start = max(warmup, total - decay_steps)
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start + 1) / max(1, total - decay_start))
    return peak + (floor - peak) * progress
