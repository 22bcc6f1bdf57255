"""Score kernels against their explicit (matrix) twins."""

from __future__ import annotations

import math

import pytest
import torch

from worker.engine.math.scores import (
    CurvatureAccumulator,
    average_ranks,
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


def _naive_ranks(values: list[float]) -> list[float]:
    """Average ranks by the definition: 0-based, each tie group at the mean of its positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for pos in range(i, j + 1):
            ranks[order[pos]] = (i + j) / 2
        i = j + 1
    return ranks


def _naive_spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _naive_ranks(x), _naive_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return float(cov / (vx * vy) ** 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_with_ties_matches_the_naive_definition(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    # Few distinct values: many ties, which ranking by position would break arbitrarily.
    x = torch.randint(0, 5, (40,), generator=g).float()
    y = x + torch.randint(0, 3, (40,), generator=g).float()
    assert average_ranks(x).tolist() == _naive_ranks(x.tolist())
    assert spearman(x, y) == pytest.approx(_naive_spearman(x.tolist(), y.tolist()), abs=1e-12)
    z = torch.randn(40, generator=g)  # no ties: the plain rank correlation
    assert spearman(z, y) == pytest.approx(_naive_spearman(z.tolist(), y.tolist()), abs=1e-12)


def test_average_ranks_shares_tied_positions() -> None:
    assert average_ranks(torch.tensor([1.0, 3.0, 3.0, 7.0])).tolist() == [0.0, 1.5, 1.5, 3.0]
    assert average_ranks(torch.tensor([2.0, 2.0, 2.0])).tolist() == [1.0, 1.0, 1.0]


def test_spearman_of_a_constant_vector_is_nan_and_bad_shapes_raise() -> None:
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))
    with pytest.raises(ValueError):
        spearman(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError):
        spearman(torch.ones(1), torch.ones(1))


def _naive_overlap(x: list[float], y: list[float], fraction: float) -> float:
    k = max(1, round(fraction * len(x)))

    def top(v: list[float]) -> set[int]:
        return set(sorted(range(len(v)), key=lambda i: (-v[i], i))[:k])

    return len(top(x) & top(y)) / k


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5, 1.0])
def test_top_overlap_matches_the_naive_definition_ties_included(fraction: float) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 6, (37,), generator=g).float()
    y = torch.randn(37, generator=g)
    got = top_overlap(x, y, fraction)
    assert got == pytest.approx(_naive_overlap(x.tolist(), y.tolist(), fraction))
    assert top_overlap(x, x, fraction) == 1.0
    with pytest.raises(ValueError):
        top_overlap(x, y, 0.0)
