"""Target-task vectors kept between the scoring calls of one worker process.

A job's shards run one after another in a worker that keeps its model loaded (the worker's model
cache), and each shard scores against the same target tasks: their vectors (exact) or directions
(projected) are computed for the first shard and reused by the next. An entry belongs to one live
model object (held by weak reference: a model that was let go takes its entries with it, and
another model with the same name never sees them) and to everything else its value depends on
(the key). The cache is bounded in floats, least recently used first out.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class CachedTask:
    """One task's vector: per scored parameter (exact) or one direction (projected)."""

    value: list[torch.Tensor]
    samples: int


class TargetCache:
    """At most ``budget`` floats of target-task vectors, per live model and key."""

    def __init__(self, budget: int = 1 << 28) -> None:
        self.budget = budget
        self._entries: OrderedDict[tuple[int, Hashable], tuple[Any, CachedTask]] = OrderedDict()

    def get(self, model: nn.Module, key: Hashable) -> CachedTask | None:
        slot = (id(model), key)
        entry = self._entries.get(slot)
        if entry is None or entry[0]() is not model:
            self._entries.pop(slot, None)
            return None
        self._entries.move_to_end(slot)
        return entry[1]

    def put(self, model: nn.Module, key: Hashable, task: CachedTask) -> None:
        size = sum(t.numel() for t in task.value)
        if size > self.budget:
            return
        self._entries[(id(model), key)] = (weakref.ref(model), task)
        while self._size() > self.budget:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def _size(self) -> int:
        live = [k for k, (ref, _) in self._entries.items() if ref() is None]
        for k in live:
            del self._entries[k]
        return sum(sum(t.numel() for t in e[1].value) for e in self._entries.values())


TARGETS = TargetCache()
"""The process's cache (a worker's shards share it)."""
