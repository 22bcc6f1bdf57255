"""Rank from sparsity: parameter budgets, dense fallback, rounding."""

from __future__ import annotations

import pytest

from worker.engine.math.ranks import factor_parameters, rank_for_sparsity


@pytest.mark.parametrize("rho", [0.3, 0.5, 0.7])
@pytest.mark.parametrize(("out_f", "in_f"), [(576, 576), (1536, 576), (192, 576)])
def test_factors_keep_about_one_minus_rho(rho: float, out_f: int, in_f: int) -> None:
    r = rank_for_sparsity(out_f, in_f, rho)
    assert r is not None
    kept = factor_parameters(out_f, in_f, r)
    assert kept <= (1 - rho) * out_f * in_f < kept + (out_f + in_f)  # floor: within one rank


def test_known_smollm2_ranks() -> None:
    assert rank_for_sparsity(576, 576, 0.3) == 201
    assert rank_for_sparsity(576, 576, 0.5) == 144


def test_layers_that_would_not_save_stay_dense() -> None:
    assert rank_for_sparsity(64, 64, 0.0) is None  # r (out + in) == out in: no saving
    assert rank_for_sparsity(4, 4, 0.9) is None  # rank would be zero
    assert rank_for_sparsity(64, 64, 0.01) == 31


def test_rounding_to_a_multiple_rounds_down() -> None:
    assert rank_for_sparsity(576, 576, 0.5, multiple=32) == 128
    assert rank_for_sparsity(576, 576, 0.5, multiple=1000) is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        rank_for_sparsity(8, 8, 1.0)
    with pytest.raises(ValueError, match="multiple"):
        rank_for_sparsity(8, 8, 0.5, multiple=0)
