"""Warm-up: a brief fine-tune of the target on a random slice of the pool, keeping checkpoints.

Gradient-based selectors (LESS, IProX) score with a model that has seen a little of the pool's
format, and TracIn sums gradient similarities over several checkpoints weighted by their
learning rates. ``warmup`` draws the slice with a fixed seed, fine-tunes, and saves one
checkpoint at the end of each of ``checkpoints`` equal segments of the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from worker.engine.data import Record
from worker.engine.errors import ConfigError
from worker.engine.models import LoadedModel
from worker.engine.progress import ProgressFn, StopFn
from worker.engine.train.config import FinetuneConfig
from worker.engine.train.finetune import FinetuneResult, finetune


def sample_records(records: Sequence[Record], k: int, seed: int) -> list[Record]:
    """``k`` records drawn without replacement (seeded), kept in their original order."""
    if not 1 <= k <= len(records):
        raise ConfigError(f"cannot draw {k} records from {len(records)}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    picked = sorted(torch.randperm(len(records), generator=gen, device="cpu")[:k].tolist())
    return [records[i] for i in picked]


def random_slice(records: Sequence[Record], fraction: float, seed: int) -> list[Record]:
    """``ceil(fraction * n)`` records drawn without replacement (seeded), in pool order."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"warm-up fraction must be in (0, 1], got {fraction}")
    return sample_records(records, max(1, math.ceil(fraction * len(records))), seed)


def checkpoint_steps(total_steps: int, checkpoints: int) -> tuple[int, ...]:
    """Steps ending ``checkpoints`` equal segments of ``total_steps`` (distinct, last = total)."""
    if checkpoints < 1:
        raise ConfigError(f"checkpoints must be >= 1, got {checkpoints}")
    return tuple(
        sorted({math.ceil(total_steps * (i + 1) / checkpoints) for i in range(checkpoints)})
    )


def warmup(
    target: LoadedModel,
    pool: Sequence[Record],
    config: FinetuneConfig,
    out_dir: Path,
    *,
    fraction: float = 0.05,
    checkpoints: int = 4,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> FinetuneResult:
    """Fine-tune ``target`` on a seeded random ``fraction`` of ``pool``; keep ``checkpoints``.

    ``config.save_steps`` is replaced by the segment ends; the manifest's ``warmup`` entry names
    the fraction and the ids of the records used.
    """
    chosen = random_slice(pool, fraction, config.seed)
    steps_per_epoch = math.ceil(len(chosen) / config.batch_size)
    total = max(1, math.ceil(config.epochs * steps_per_epoch))
    # The moments go with each checkpoint so scoring can precondition with Adam (LESS).
    config = replace(
        config, save_steps=checkpoint_steps(total, checkpoints), save_optimizer_state=True
    )
    return finetune(
        target,
        chosen,
        config,
        out_dir,
        progress=progress,
        should_stop=should_stop,
        extra_manifest={
            "kind": "warmup",
            "warmup": {
                "fraction": fraction,
                "pool_size": len(pool),
                "ids": [r.id for r in chosen],
            },
        },
    )
