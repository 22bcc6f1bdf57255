"""The target-vector cache: per live model object, bounded in floats, least recently used out."""

from __future__ import annotations

import gc

import torch
from torch import nn

from worker.engine.scoring.targets import CachedTask, TargetCache


def _task(n: int) -> CachedTask:
    return CachedTask([torch.zeros(n)], samples=1)


def test_entries_belong_to_one_live_model_and_the_budget_evicts_the_oldest() -> None:
    cache = TargetCache(budget=10)
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    cache.put(a, "k", _task(4))
    assert cache.get(a, "k") is not None and cache.get(b, "k") is None
    cache.put(a, "j", _task(4))
    assert cache.get(a, "k") is not None  # now the most recent
    cache.put(b, "k", _task(4))  # 12 floats > 10: the least recently used ("j") goes
    assert cache.get(a, "j") is None and cache.get(a, "k") is not None
    cache.put(a, "huge", _task(11))  # larger than the whole budget: not kept
    assert cache.get(a, "huge") is None
    del b
    gc.collect()
    cache.put(a, "x", _task(6))  # b's entry died with b, so a's two entries fit
    assert cache.get(a, "x") is not None and cache.get(a, "k") is not None
