"""Rank from sparsity: parameter budgets, dense fallback, rounding."""

from __future__ import annotations

import pytest
import torch

from worker.engine.math.ranks import (
    LayerSpectrum,
    factor_parameters,
    global_ranks,
    official_rank,
    rank_for_sparsity,
)


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


def test_official_rule_rounds_up_to_a_multiple_and_keeps_layers_dense() -> None:
    # SmolLM2 shapes: square 576 (q/o), k/v (192 x 576), MLP (1536 x 576)
    assert official_rank(576, 576, 0.5) == 256  # 144 -> up to 256
    assert official_rank(192, 576, 0.5) == 128  # 72 -> 128: keeps 89% of the layer
    assert official_rank(1536, 576, 0.5) == 256  # 209.45 -> 209 -> 256
    assert official_rank(192, 576, 0.3) == 128  # 100.8 -> 101 -> 128
    assert official_rank(192, 576, 0.1) is None  # 129.6 -> 130 -> 256 >= 192: dense
    assert official_rank(8, 8, 0.5, multiple=1) == 2  # round(2.0), no rounding up
    assert official_rank(4, 4, 0.9, multiple=1) == 1  # never below 1
    with pytest.raises(ValueError, match="sparsity"):
        official_rank(8, 8, 1.0)


def _twin(spectra: dict[str, LayerSpectrum], budget: int, floor: dict[str, int]) -> dict[str, int]:
    """Naive twin for equal widths: every component past the floors, sorted by removed
    relative error, taken in order while the budget lasts."""
    ranks = dict(floor)
    spent = sum(floor[n] * (s.out_features + s.in_features) for n, s in spectra.items())
    items = []
    for n, s in spectra.items():
        s2 = s.singular_values.double().square()
        for k in range(floor[n], len(s2)):
            items.append((float(s2[k] / s2.sum()), n))
    for _, n in sorted(items, key=lambda t: -t[0]):
        w = spectra[n].out_features + spectra[n].in_features
        if spent + w > budget:
            break
        spent += w
        ranks[n] += 1
    return ranks


def test_global_ranks_match_the_sorted_twin_and_respect_budget_and_floors() -> None:
    g = torch.Generator().manual_seed(0)
    spectra = {}
    for i, decay in enumerate([0.8, 0.9, 0.99, 0.95]):
        noise = 1 + 0.1 * torch.rand(64, generator=g, dtype=torch.float64)
        s = decay ** torch.arange(64, dtype=torch.float64) * noise
        spectra[f"l{i}"] = LayerSpectrum(256, 256, s.sort(descending=True).values)
    floor = {n: 4 for n in spectra}
    budget = 4 * 40 * 512
    got = global_ranks(spectra, budget, floor)
    assert got == _twin(spectra, budget, floor)
    spent = sum(r * 512 for r in got.values() if r is not None)
    assert budget - 512 < spent <= budget
    assert all(r is not None and r >= 4 for r in got.values())
    # a fast-decaying spectrum needs fewer components than a flat one
    assert (got["l0"] or 0) < (got["l2"] or 0)


def test_global_ranks_of_identical_layers_are_uniform() -> None:
    s = 0.9 ** torch.arange(100, dtype=torch.float64)
    spectra = {n: LayerSpectrum(200, 100, s) for n in ("a", "b", "c")}
    got = global_ranks(spectra, 3 * 30 * 300, {n: 1 for n in spectra})
    assert got == {"a": 30, "b": 30, "c": 30}


def test_global_ranks_keep_a_layer_dense_when_that_pays() -> None:
    flat = torch.ones(64, dtype=torch.float64)
    steep = 0.1 ** torch.arange(64, dtype=torch.float64)
    spectra = {"flat": LayerSpectrum(64, 64, flat), "steep": LayerSpectrum(64, 64, steep)}
    # enough for the flat layer to go dense (64 * 64) plus the steep one's floor
    got = global_ranks(spectra, 64 * 64 + 2 * 128, {"flat": 1, "steep": 1})
    assert got["flat"] is None
    assert got["steep"] is not None and got["steep"] <= 2


def test_global_ranks_refuse_floors_above_the_budget() -> None:
    spectra = {"a": LayerSpectrum(10, 10, torch.ones(10))}
    with pytest.raises(ValueError, match="floors"):
        global_ranks(spectra, 10, {"a": 3})
