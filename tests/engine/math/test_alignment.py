"""Factor-space targets are the chain rule; the cosine and L_GA behave as defined."""

from __future__ import annotations

import pytest
import torch

from worker.engine.math.alignment import (
    factor_cosine,
    factor_space_targets,
    gradient_alignment_loss,
)


def test_factor_space_targets_equal_autograd_chain_rule() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    X = torch.randn(5, 11, generator=g, dtype=torch.float64)
    Y = torch.randn(7, 11, generator=g, dtype=torch.float64)

    def loss(W: torch.Tensor) -> torch.Tensor:  # a non-quadratic loss of y = W x
        return torch.sin(W @ X - Y).square().sum() + (W @ X).tanh().sum()

    gA, gB = torch.autograd.grad(loss(A @ B), (A, B))
    W = (A @ B).detach().requires_grad_(True)
    (gW,) = torch.autograd.grad(loss(W), W)
    tA, tB = factor_space_targets(gW, A, B)
    torch.testing.assert_close(gA, tA, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gB, tB, rtol=1e-12, atol=1e-12)
    assert not tA.requires_grad and not tB.requires_grad  # targets are constants


def test_cosine_of_a_pair_with_itself_and_its_opposite() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 2, generator=g), torch.randn(2, 6, generator=g)
    assert float(factor_cosine(a, b, a, b)) == pytest.approx(1.0, abs=1e-6)
    assert float(factor_cosine(a, b, -a, -b)) == pytest.approx(-1.0, abs=1e-6)
    assert float(factor_cosine(a, b, 3.0 * a, 3.0 * b)) == pytest.approx(1.0, abs=1e-6)
    flat = torch.cat([a.flatten(), b.flatten()])
    c, d = torch.randn(4, 2, generator=g), torch.randn(2, 6, generator=g)
    other = torch.cat([c.flatten(), d.flatten()])
    expected = torch.nn.functional.cosine_similarity(flat, other, dim=0)
    assert float(factor_cosine(a, b, c, d)) == pytest.approx(float(expected), abs=1e-6)


def test_gradient_alignment_loss_is_one_minus_mean_cosine() -> None:
    cos = [torch.tensor(1.0), torch.tensor(0.5), torch.tensor(-0.5)]
    assert float(gradient_alignment_loss(cos)) == pytest.approx(1.0 - 1.0 / 3.0)
    with pytest.raises(ValueError, match="no layer"):
        gradient_alignment_loss([])
