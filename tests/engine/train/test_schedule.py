"""The learning-rate schedule."""

from __future__ import annotations

import itertools

import pytest

from worker.engine.train.schedule import lr_at, warmup_steps


def test_linear_warmup_then_linear_decay() -> None:
    total, warm = 10, warmup_steps(10, 0.2)
    assert warm == 2
    lrs = [lr_at(s, total, 1.0, warm, "linear") for s in range(total)]
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(1.0 / 8)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
    assert min(lrs) > 0


def test_constant_and_bounds() -> None:
    assert [lr_at(s, 4, 0.1, 0, "constant") for s in range(4)] == [0.1] * 4
    assert warmup_steps(1, 0.5) == 0
    with pytest.raises(ValueError):
        lr_at(4, 4, 0.1, 0, "constant")
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, 4, 0.1, 0, "cosine")
