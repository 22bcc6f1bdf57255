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
    from worker.engine.math.projection import eigen_decomposition, eigen_projection

    def eigen_basis(cov: torch.Tensor) -> torch.Tensor:
        return eigen_decomposition(cov)[1]

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


def _kept(spectra: list[tuple[torch.Tensor, torch.Tensor]], sizes: list[tuple[int, int]]) -> float:
    """The energy a grid keeps under the Kronecker model, summed over blocks."""
    return sum(
        float(lam[:a].sum() * mu[:b].sum())
        for (lam, mu), (a, b) in zip(spectra, sizes, strict=True)
    )


def _spectra(seed: int, shapes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for o, i in shapes:
        scale = float(torch.rand(1, generator=g)) * 10 ** float(
            torch.randint(-2, 3, (1,), generator=g)
        )
        decay_o, decay_i = 0.5 + 0.5 * torch.rand(2, generator=g)
        out.append(
            (
                scale * decay_o ** torch.arange(o, dtype=torch.float64),
                decay_i ** torch.arange(i, dtype=torch.float64),
            )
        )
    return out


def test_energy_sizes_spend_the_budget_and_keep_more_energy_than_a_uniform_grid() -> None:
    from worker.engine.math.projection import energy_sizes, kron_sizes

    shapes = [(64, 48), (48, 64), (128, 48), (48, 128), (16, 16), (64, 64)]
    for seed in range(5):
        spectra = _spectra(seed, shapes)
        for budget in (len(shapes), 60, 500, 4000):
            sizes = energy_sizes(spectra, budget)
            assert len(sizes) == len(shapes)
            assert all(
                1 <= a <= o and 1 <= b <= i for (a, b), (o, i) in zip(sizes, shapes, strict=True)
            )
            used = sum(a * b for a, b in sizes)
            assert used <= budget
            assert used >= budget - max(max(o, i) for o, i in shapes)  # within one row/column
            if budget > len(shapes):
                uniform = kron_sizes(shapes, budget)
                assert _kept(spectra, sizes) >= _kept(spectra, uniform)
    # a block whose gradients are 100x larger gets the larger grid
    flat = torch.ones(32, dtype=torch.float64)
    sizes = energy_sizes([(100 * flat, flat), (flat, flat)], 200)
    assert sizes[0][0] * sizes[0][1] > sizes[1][0] * sizes[1][1]
    # a budget that covers every block whole keeps every block whole
    assert energy_sizes([(flat[:4], flat[:3]), (flat[:2], flat[:5])], 10**6) == [(4, 3), (2, 5)]


def test_energy_sizes_refuse_bad_input() -> None:
    from worker.engine.math.projection import energy_sizes

    one = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="smaller than the number of gradient blocks"):
        energy_sizes([(one, one), (one, one)], 1)
    with pytest.raises(ValueError, match="at least one gradient block"):
        energy_sizes([], 8)
    with pytest.raises(ValueError, match="non-negative"):
        energy_sizes([(-one, one)], 8)


def test_eigen_decomposition_values_are_the_descending_spectrum() -> None:
    from worker.engine.math.projection import eigen_decomposition

    g = torch.Generator().manual_seed(1)
    X = torch.randn(50, 6, generator=g)
    cov = X.T @ X
    values, rows = eigen_decomposition(cov)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(cov.double()).flip(0))
    assert torch.equal(rows, eigen_decomposition(cov.clone())[1])  # a pure function of cov
    torch.testing.assert_close(
        torch.diag(rows.double() @ cov.double() @ rows.double().T), values, rtol=1e-5, atol=1e-6
    )


def test_energy_grid_sizes_follow_energy_to_the_two_thirds_and_spend_the_budget() -> None:
    from worker.engine.math.projection import energy_grid_sizes, kron_sizes

    shapes = [(64, 64)] * 4
    sizes = energy_grid_sizes(shapes, [8.0, 1.0, 1.0, 0.0], 400)
    dims = [a * b for a, b in sizes]
    assert sum(dims) <= 400 and sum(dims) >= 400 - 64
    assert all(1 <= a <= 64 and 1 <= b <= 64 for a, b in sizes)
    assert dims[0] > dims[1] and dims[3] < dims[1]  # 8^(2/3) = 4 times the share of a 1
    assert 3.0 <= dims[0] / dims[1] <= 5.0
    assert all(max(a, b) <= 2 * min(a, b) + 1 for a, b in sizes if min(a, b) > 1)  # near-square
    # a block too small to take its share keeps all it can use; the rest goes to the others
    sizes = energy_grid_sizes([(2, 3), (64, 64)], [1e6, 1.0], 500)
    assert sizes[0] == (2, 3) and sizes[1][0] * sizes[1][1] >= 494 - 64
    # equal energies: the uniform grid's budget, near-square blocks
    even = energy_grid_sizes(shapes, [1.0] * 4, 400)
    assert sum(a * b for a, b in even) == sum(a * b for a, b in kron_sizes(shapes, 400))
    # no energy anywhere: the uniform grid
    assert energy_grid_sizes(shapes, [0.0] * 4, 400) == kron_sizes(shapes, 400)
    # the budget floor of one feature per block holds
    assert energy_grid_sizes(shapes, [1e9, 0.0, 0.0, 0.0], 4) == [(1, 1)] * 4
    with pytest.raises(ValueError, match="non-negative"):
        energy_grid_sizes(shapes, [1.0, -1.0, 1.0, 1.0], 400)
    with pytest.raises(ValueError, match="3 energies for 4 blocks"):
        energy_grid_sizes(shapes, [1.0] * 3, 400)
