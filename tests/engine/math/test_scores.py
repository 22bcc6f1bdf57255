"""Score kernels against their explicit (matrix) twins."""

from __future__ import annotations

import pytest
import torch

from worker.engine.math.scores import (
    CurvatureAccumulator,
    influence_direction,
    l2_normalize,
    spearman,
    target_direction,
    top_overlap,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_l2_normalize_keeps_zero_rows_zero() -> None:
    G = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    unit, norms = l2_normalize(G)
    assert torch.allclose(unit, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    assert torch.allclose(norms, torch.tensor([5.0, 0.0]))


def test_mean_direction_equals_mean_of_the_full_score_matrix() -> None:
    train, target = _rand(10, 16), _rand(7, 16, seed=1)
    full = train @ target.T  # the n_train x n_target matrix the fast path never forms
    assert torch.allclose(train @ target_direction(target), full.mean(dim=1), atol=1e-5)
    with pytest.raises(ValueError):
        target_direction(torch.zeros(0, 16))


def test_influence_matches_explicit_inverse_and_streams_blocks() -> None:
    G, v = _rand(40, 6), _rand(6, seed=5)
    acc = CurvatureAccumulator(6)
    for start in range(0, 40, 7):
        acc.add(G[start : start + 7])
    F = G.double().T @ G.double() / 40
    assert torch.allclose(acc.matrix(), F)
    direction = influence_direction(acc.matrix(), v, damping=0.1)
    explicit = (G.double() @ torch.linalg.inv(F + 0.1 * torch.eye(6)) @ v.double()).float()
    assert torch.allclose(G @ direction, explicit, atol=1e-4)
    with pytest.raises(ValueError):
        influence_direction(F, v, damping=0.0)


def test_spearman_and_top_overlap() -> None:
    x = torch.arange(20.0)
    assert spearman(x, x * 3 + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert top_overlap(x, x, 0.25) == 1.0
    assert top_overlap(x, -x, 0.25) == 0.0
