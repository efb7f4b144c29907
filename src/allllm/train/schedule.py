"""Learning-rate schedules over one step-wise run.

Every run re-warms: the schedule is a pure function of the step *within the
run*, so a resumed run recomputes exactly the LR it would have had, and no
scheduler state needs to survive a crash. Warm-up is clamped to 10% of a short
run's steps, rounded up and never below one step, so even a 3-step run on
pretrained weights does not start at peak LR (docs/design.md: config).
"""

from __future__ import annotations

import math

from allllm.config import TrainConfig


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    """Warm-up steps actually used: ``min(warmup_steps, max(1, ceil(0.1 * total_steps)))``.

    ``warmup_steps: 0`` still means no warm-up at all.
    """
    if warmup_steps <= 0:
        return 0
    return min(warmup_steps, max(1, math.ceil(0.1 * total_steps)))


def legacy_warmup(warmup_steps: int, total_steps: int) -> int:
    """The warm-up of allllm 0.1.0 (``min(warmup_steps, total // 10)``: none under 10 steps).

    Runs planned before the plan stored its warm-up keep it, so they finish exactly.
    """
    return max(0, min(warmup_steps, total_steps // 10))


def lr_at(step: int, total_steps: int, train: TrainConfig, warmup: int | None = None) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a run of ``total_steps`` steps.

    ``warmup``: the run's warm-up steps as its plan stored them (default: computed now).
    """
    peak, floor = train.lr, train.min_lr
    total = max(1, total_steps)
    if warmup is None:
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
