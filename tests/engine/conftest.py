"""Every engine test runs torch on one intra-op thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models are all small ops: with other jobs on the two cores, a second intra-op
    thread spends its time waiting at barriers (measured: a 3-step alignment on a tiny model,
    25 s with 2 threads against 0.6 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fresh_target_cache() -> Iterator[None]:
    """Each test starts with the process's target-vector cache empty (a worker's shards share it;
    tests are not shards of one job)."""
    from worker.engine.scoring.targets import TARGETS

    TARGETS.clear()
    yield
    TARGETS.clear()
