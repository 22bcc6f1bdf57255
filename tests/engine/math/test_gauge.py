"""The balanced gauge keeps the product and evens each rank component's norms."""

from __future__ import annotations

import pytest
import torch

from worker.engine.math.gauge import balance_factors, gauge_imbalance


def test_balancing_keeps_the_product_and_evens_each_component() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(9, 4, generator=g, dtype=torch.float64) * torch.tensor([300.0, 1.0, 0.01, 7])
    B = torch.randn(4, 6, generator=g, dtype=torch.float64) * 1e-3
    a, b = balance_factors(A, B)
    torch.testing.assert_close(a @ b, A @ B, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(
        torch.linalg.vector_norm(a, dim=0), torch.linalg.vector_norm(b, dim=1), rtol=1e-12, atol=0
    )
    # each component keeps the geometric mean of its two norms
    expected = (torch.linalg.vector_norm(A, dim=0) * torch.linalg.vector_norm(B, dim=1)).sqrt()
    torch.testing.assert_close(torch.linalg.vector_norm(a, dim=0), expected)
    assert gauge_imbalance(A, B) > 100
    assert gauge_imbalance(a, b) == pytest.approx(1.0, rel=0.5)


def test_balancing_is_idempotent_and_keeps_dtype() -> None:
    g = torch.Generator().manual_seed(1)
    A = torch.randn(5, 3, generator=g).to(torch.bfloat16)
    B = (torch.randn(3, 4, generator=g) * 50).to(torch.bfloat16)
    a, b = balance_factors(A, B)
    assert a.dtype == b.dtype == torch.bfloat16
    a32, b32 = balance_factors(A.float(), B.float())
    a2, b2 = balance_factors(a32, b32)
    torch.testing.assert_close(a2, a32, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b2, b32, rtol=1e-6, atol=1e-6)


def test_zero_components_are_left_alone() -> None:
    A = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    B = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    a, b = balance_factors(A, B)
    torch.testing.assert_close(a @ b, A @ B)
    torch.testing.assert_close(a[:, 1], A[:, 1])
    torch.testing.assert_close(b[1], B[1])
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_shapes_that_do_not_chain_are_refused() -> None:
    with pytest.raises(ValueError, match="do not chain"):
        balance_factors(torch.ones(3, 2), torch.ones(3, 4))
