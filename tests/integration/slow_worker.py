"""The recovery tests' Celery app: workers that must be caught with a job in progress.

It is ``worker.celery_app`` with the scorer slowed by ``BATCH_DELAY_S`` after each batch, so
a shard of four one-sample batches is in flight for seconds rather than milliseconds: a test
that kills a worker mid-shard, flushes the broker or cuts the database then acts on a job in
progress on any machine, instead of racing a fast one to it. The patch is applied before
the prefork pool forks, so the pool's child scores through it too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import worker.engine.pipeline as pipeline
from worker.celery_app import app

BATCH_DELAY_S = 0.5

_iter_scores = pipeline.iter_scores


def _slow_iter_scores(*args: Any, **kwargs: Any) -> Iterator[Any]:
    for batch in _iter_scores(*args, **kwargs):
        time.sleep(BATCH_DELAY_S)
        yield batch


pipeline.iter_scores = _slow_iter_scores  # type: ignore[assignment]

__all__ = ["app"]
