"""The learning-rate schedule: linear warm-up, then linear decay or constant."""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Number of warm-up steps: ``ceil(ratio * total)``, at most ``total - 1``."""
    if total_steps < 1:
        raise ValueError("total_steps must be >= 1")
    return min(math.ceil(warmup_ratio * total_steps), total_steps - 1)


def lr_at(step: int, total_steps: int, peak: float, warmup: int, schedule: str) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    Warm-up rises linearly to ``peak`` over ``warmup`` steps; then ``"linear"`` decays linearly
    towards zero and ``"constant"`` stays at ``peak``. No step has a zero rate: the first warm-up
    step has ``peak / warmup`` and the last decay step ``peak / (total - warmup)``, so every step
    of a short run does some work.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps})")
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule == "linear":
        return peak * (total_steps - step) / (total_steps - warmup)
    raise ValueError(f"unknown schedule {schedule!r}")
