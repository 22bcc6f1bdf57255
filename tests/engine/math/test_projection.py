"""Kronecker-factored projection against its dense twin, its size rule and JL behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from tests.engine.math.twins import dense_kron_project
from worker.engine.math.projection import (
    gaussian_projection,
    kron_features,
    kron_relative_variance,
    kron_sizes,
)


def test_gaussian_projection_is_seeded_and_scaled() -> None:
    a = gaussian_projection(64, 50, seed=3)
    assert torch.equal(a, gaussian_projection(64, 50, seed=3))
    assert not torch.equal(a, gaussian_projection(64, 50, seed=4))
    # E[P^T P] = I: the column norms concentrate around 1.
    big = gaussian_projection(4000, 20, seed=0)
    assert torch.allclose((big.T @ big).diagonal(), torch.ones(20), atol=0.1)
    with pytest.raises(ValueError):
        gaussian_projection(0, 3, seed=0)


def test_kron_features_match_dense_projection_of_summed_outer_products() -> None:
    g = torch.Generator().manual_seed(0)
    delta, h = torch.randn(3, 7, 6, generator=g), torch.randn(3, 7, 5, generator=g)
    mask = torch.ones(3, 7)
    mask[1, 4:] = 0  # a padded row: its tail must contribute nothing
    h = h * mask.unsqueeze(-1)  # the hooks zero padded inputs before projecting them
    left, right = gaussian_projection(4, 6, 1), gaussian_projection(3, 5, 2)
    fast = kron_features(delta @ left.T, h @ right.T)
    for b in range(3):
        n = int(mask[b].sum())
        grad = delta[b, :n].T @ h[b, :n]  # (out, in) = sum_t delta_t h_t^T
        assert torch.allclose(fast[b], dense_kron_project(grad, left, right), atol=1e-5)


def test_kron_sizes_fill_budget_without_exceeding_it_or_any_side() -> None:
    shapes = [(576, 576), (192, 576), (1536, 576), (576, 1536)] * 30
    sizes = kron_sizes(shapes, 8192)
    total = sum(a * b for a, b in sizes)
    assert 8192 - 2 * len(shapes) * 10 < total <= 8192
    small = kron_sizes([(3, 40), (50, 2)], 1000)
    assert all(a <= o and b <= i for (a, b), (o, i) in zip(small, [(3, 40), (50, 2)], strict=True))
    with pytest.raises(ValueError):
        kron_sizes([(4, 4)] * 5, 4)


def test_kron_projection_preserves_inner_products_within_its_jl_tolerance() -> None:
    """Inner products of many-layer projected gradients stay within 4 sigma of the truth, where
    sigma comes from the scheme's worst-case (rank-one) per-layer relative variance."""
    gen = torch.Generator().manual_seed(1)
    n_layers, n, out, inp, tokens = 24, 6, 48, 40, 5
    budget = 24 * 64  # d = 1536: 8 x 8 per layer
    sizes = kron_sizes([(out, inp)] * n_layers, budget)
    feats, exact = [], torch.zeros(n, n)
    per_layer_sq = torch.zeros(n, n)
    for layer, (ko, ki) in enumerate(sizes):
        delta = torch.randn(n, tokens, out, generator=gen)
        h = torch.randn(n, tokens, inp, generator=gen)
        grads = torch.einsum("bto,bti->boi", delta, h).reshape(n, -1)
        exact += grads @ grads.T
        norms = grads.norm(dim=1)
        per_layer_sq += kron_relative_variance(ko, ki) * torch.outer(norms, norms) ** 2
        left = gaussian_projection(ko, out, 100 + 2 * layer)
        right = gaussian_projection(ki, inp, 101 + 2 * layer)
        feats.append(kron_features(delta @ left.T, h @ right.T))
    proj = torch.cat(feats, dim=1)
    approx = proj @ proj.T
    total_norm = exact.diagonal().sqrt()
    scale = torch.outer(total_norm, total_norm)
    sigma = per_layer_sq.sqrt() / scale
    err = (approx - exact).abs() / scale
    assert bool((err <= 4 * sigma).all()), float((err / sigma).max())
    # and the estimate is informative: the tolerance itself is small at this d
    assert float(sigma.max()) < 0.2
    assert math.isclose(kron_relative_variance(8, 8), 0.5625)


def test_eigen_projection_is_the_top_orthonormal_eigenbasis() -> None:
    from worker.engine.math.projection import eigen_basis, eigen_projection

    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 12, generator=g) * torch.linspace(3, 0.1, 12)
    cov = X.T @ X
    basis = eigen_basis(cov)
    P = eigen_projection(basis, 4)
    assert P.shape == (4, 12) and P.dtype == torch.float32
    torch.testing.assert_close(P @ P.T, torch.eye(4), atol=1e-5, rtol=0)
    vals = torch.linalg.eigvalsh(cov.double()).flip(0)[:4]
    torch.testing.assert_close(torch.diag(P.double() @ cov.double() @ P.double().T), vals)
    # a pure function of the covariance, signs included
    assert torch.equal(P, eigen_projection(eigen_basis(cov.clone()), 4))
    torch.testing.assert_close(basis @ basis.T, torch.eye(12), atol=1e-5, rtol=0)
    assert bool((P.gather(1, P.abs().argmax(dim=1, keepdim=True)) > 0).all())
    with pytest.raises(ValueError, match=r"k must be in 1\.\.12"):
        eigen_projection(basis, 13)
    with pytest.raises(ValueError, match="square"):
        eigen_basis(cov[:3])
