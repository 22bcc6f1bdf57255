"""Factor-space targets are the chain rule; the cosine and L_GA behave as defined."""

from __future__ import annotations

import math

import pytest
import torch

from worker.engine.math.alignment import (
    factor_cosines,
    factor_space_targets,
    gradient_alignment_loss,
    output_gradient_error,
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


def test_cosines_are_taken_per_factor() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 2, generator=g), torch.randn(2, 6, generator=g)
    c, d = torch.randn(4, 2, generator=g), torch.randn(2, 6, generator=g)
    ca, cb = factor_cosines(a, b, c, d)
    cos = torch.nn.functional.cosine_similarity
    assert float(ca) == pytest.approx(float(cos(a.flatten(), c.flatten(), dim=0)), abs=1e-6)
    assert float(cb) == pytest.approx(float(cos(b.flatten(), d.flatten(), dim=0)), abs=1e-6)
    ca, cb = factor_cosines(a, b, -3.0 * a, 2.0 * b)
    assert (float(ca), float(cb)) == pytest.approx((-1.0, 1.0), abs=1e-6)


def test_per_factor_loss_does_not_depend_on_the_gauge() -> None:
    """Rescaling A by c and B by 1/c scales each factor's gradient and target alike, so the
    per-factor cosines (and L_GA) stay; one cosine over both factors would move."""
    g = torch.Generator().manual_seed(2)
    A = torch.randn(6, 3, generator=g, dtype=torch.float64)
    B = torch.randn(3, 5, generator=g, dtype=torch.float64)
    gW_proxy = torch.randn(6, 5, generator=g, dtype=torch.float64)
    gW_target = torch.randn(6, 5, generator=g, dtype=torch.float64)

    def loss(scale: float) -> float:
        a, b = A * scale, B / scale
        pa, pb = factor_space_targets(gW_proxy, a, b)  # the proxy's own factor gradients
        ta, tb = factor_space_targets(gW_target, a, b)
        return float(gradient_alignment_loss([factor_cosines(pa, pb, ta, tb)]))

    assert loss(1.0) == pytest.approx(loss(40.0), abs=1e-12)
    assert loss(1.0) == pytest.approx(loss(0.01), abs=1e-12)


def test_gradient_alignment_loss_averages_the_two_factors_then_the_layers() -> None:
    one, half = torch.tensor(1.0), torch.tensor(0.5)
    pairs = [(one, one), (half, -half)]
    # layer 1: 0; layer 2: 0.5 * (0.5 + 1.5) = 1
    assert float(gradient_alignment_loss(pairs)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no layer"):
        gradient_alignment_loss([])


def test_sample_gram_equals_inner_products_of_formed_gradients() -> None:
    from worker.engine.math.alignment import cosine_matrix, gram_alignment_loss, sample_gram

    g = torch.Generator().manual_seed(3)
    left = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    right = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    left[1, 3:] = 0  # padding: no gradient there
    G = [torch.einsum("to,ti->oi", left[i], right[i]) for i in range(3)]
    want = torch.tensor([[float((G[i] * G[j]).sum()) for j in range(3)] for i in range(3)])
    K = sample_gram(left, right)
    torch.testing.assert_close(K, want.double())
    C = cosine_matrix(K)
    torch.testing.assert_close(C.diagonal(), torch.ones(3, dtype=torch.float64))
    assert float(gram_alignment_loss(C, C)) == 0.0
    assert float(gram_alignment_loss(C, torch.eye(3, dtype=torch.float64))) > 0
    with pytest.raises(ValueError, match="B >= 2"):
        gram_alignment_loss(C[:1, :1], C[:1, :1])


def test_output_gradient_error_is_one_minus_the_cosine_per_layer_and_record() -> None:
    t = torch.zeros(2, 3, 4)
    t[0, 0] = torch.tensor([3.0, 4.0, 0.0, 0.0])
    t[1, 1] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    p = t.clone()
    p[0, 2] = torch.tensor([0.0, 5.0, 0.0, 0.0])  # record 0: cos = 25 / (5 * sqrt(50))
    p[1] = -7.0 * t[1]  # record 1: opposite direction, any scale: cos = -1
    u = torch.ones(2, 1, 2)  # a second layer, matched up to scale
    got = output_gradient_error([p, 3.0 * u], [t, u])
    cos0 = 25.0 / (5.0 * math.sqrt(50.0))
    assert float(got) == pytest.approx((((1.0 - cos0) + 2.0) / 2 + 0.0) / 2)
    assert float(output_gradient_error([t], [t])) == pytest.approx(0.0, abs=1e-7)
    # shrinking the proxy's gradients changes nothing: only directions count
    assert float(output_gradient_error([0.01 * p], [t])) == pytest.approx(
        float(output_gradient_error([p], [t]))
    )
    # a record whose target gradient vanishes at a layer is left out of that layer's mean
    t2 = t.clone()
    t2[1] = 0.0
    assert float(output_gradient_error([p], [t2])) == pytest.approx(1.0 - cos0)
    # differentiable in the proxy's side only
    q = p.clone().requires_grad_(True)
    tt = t.clone().requires_grad_(True)
    output_gradient_error([q], [tt]).backward()
    assert q.grad is not None and float(q.grad.abs().sum()) > 0 and tt.grad is None
    with pytest.raises(ValueError, match="one target per proxy layer"):
        output_gradient_error([p], [])
    with pytest.raises(ValueError, match=r"\(B, T, out\)"):
        output_gradient_error([p], [t[:, :2]])
    with pytest.raises(ValueError, match="every target output gradient is zero"):
        output_gradient_error([p], [torch.zeros_like(p)])
