"""Ranks of low-rank factorisations: per layer from a target sparsity (fraction of parameters
removed), by this project's rule or the authors', and globally across layers from their
whitened spectra under one parameter budget."""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


def _check(out_features: int, in_features: int, sparsity: float, multiple: int) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if multiple < 1:
        raise ValueError(f"rank multiple must be at least 1, got {multiple}")
    if out_features < 1 or in_features < 1:
        raise ValueError(f"layer shape must be positive, got ({out_features}, {in_features})")


def rank_for_sparsity(
    out_features: int, in_features: int, sparsity: float, multiple: int = 1
) -> int | None:
    """The rank ``r`` whose factors ``A: (out, r)``, ``B: (r, in)`` keep about ``(1 - rho) out in``.

    ``r = floor((1 - rho) * out * in / (out + in))``, then rounded down to a multiple of
    ``multiple`` (``1``: no rounding). Returns ``None`` when the layer should stay dense: the rank
    would be zero, or the factors would hold at least as many parameters as the dense weight.
    """
    _check(out_features, in_features, sparsity, multiple)
    dense = out_features * in_features
    r = int((1.0 - sparsity) * dense // (out_features + in_features))
    r -= r % multiple
    if r < 1 or r * (out_features + in_features) >= dense:
        return None
    return r


def official_rank(
    out_features: int, in_features: int, sparsity: float, multiple: int = 128
) -> int | None:
    """The authors' rule (csr16/IProX ``estimate_rank`` and its caller): the parameter-matched
    rank rounded to the nearest integer (at least 1), then UP to a multiple of ``multiple``;
    ``None`` (dense) when that reaches ``min(out, in)``. Rounding up keeps more than
    ``1 - rho`` of each layer: on SmolLM2 the rule's "0.5" keeps 74.8% of the model."""
    _check(out_features, in_features, sparsity, multiple)
    full = min(out_features, in_features)
    matched = (1.0 - sparsity) * out_features * in_features / (out_features + in_features)
    raw = max(1, min(round(matched), full))
    r = -(-raw // multiple) * multiple
    return None if r >= full else r


def factor_parameters(out_features: int, in_features: int, rank: int) -> int:
    """Parameters held by ``A: (out, r)`` and ``B: (r, in)`` (bias not included)."""
    return rank * (out_features + in_features)


@dataclass(frozen=True)
class LayerSpectrum:
    """A layer ``(out, in)`` and the singular values ``s: (k,)`` (descending) of the matrix its
    rank-``r`` truncation approximates (the whitened weight for IPSVD, ``W`` for SVD)."""

    out_features: int
    in_features: int
    singular_values: torch.Tensor


def global_ranks(
    spectra: Mapping[str, LayerSpectrum], budget: int, floor: Mapping[str, int]
) -> dict[str, int | None]:
    """Ranks spending at most ``budget`` factor parameters where they remove the most error.

    Each layer's error is normalised by its own norm: keeping component ``k`` of layer ``l``
    removes ``s_lk^2 / sum_j s_lj^2`` of that layer's relative squared error at a cost of
    ``out_l + in_l`` parameters. Components are taken greedily by removed error per parameter
    (within a layer the gains fall with ``k``, so each layer keeps a leading block). A layer
    whose rank reaches the dense break-even (``r (out + in) >= out in``) stays dense (``None``)
    and is charged ``out in``. Every layer starts at ``floor[name]`` (at least 1), so no layer
    collapses; the floors' cost must fit the budget. A layer with a zero spectrum keeps its
    floor. The result is within one component's cost of the budget.
    """
    ranks: dict[str, int] = {}
    spent = 0
    heap: list[tuple[float, str, int]] = []
    caps: dict[str, int] = {}
    gains: dict[str, list[float]] = {}
    for name, sp in spectra.items():
        out_f, in_f = sp.out_features, sp.in_features
        cap = (out_f * in_f - 1) // (out_f + in_f)  # the largest rank cheaper than dense
        s2 = sp.singular_values.double().square()
        total = float(s2.sum())
        base = max(1, min(int(floor.get(name, 1)), max(cap, 1)))
        ranks[name] = base
        caps[name] = cap
        spent += base * (out_f + in_f)
        gains[name] = (s2 / total).tolist() if total > 0 else []
        _push(heap, name, base, gains[name], out_f, in_f, cap)
    if spent > budget:
        raise ValueError(f"the rank floors need {spent} parameters, above the budget {budget}")
    dense: set[str] = set()
    while heap:
        _, name, k = heapq.heappop(heap)
        sp = spectra[name]
        width = sp.out_features + sp.in_features
        if k == caps[name]:
            # The next component would make the factors as large as the weight: go dense.
            cost = sp.out_features * sp.in_features - ranks[name] * width
            if spent + cost <= budget:
                spent += cost
                dense.add(name)
            continue
        if spent + width > budget:
            continue  # a layer with a narrower width may still fit
        spent += width
        ranks[name] = k + 1
        _push(heap, name, k + 1, gains[name], sp.out_features, sp.in_features, caps[name])
    return {n: (None if n in dense else r) for n, r in ranks.items()}


def _push(
    heap: list[tuple[float, str, int]],
    name: str,
    rank: int,
    gains: Sequence[float],
    out_features: int,
    in_features: int,
    cap: int,
) -> None:
    """Queue layer ``name``'s next component (index ``rank``), keyed by removed error per
    parameter; at the cap the entry stands for going dense, keyed by all the error left."""
    width = out_features + in_features
    if rank > cap:
        return
    if rank == cap:
        left = math.fsum(gains[rank:])
        dense_cost = out_features * in_features - cap * width
        heapq.heappush(heap, (-left / max(dense_cost, 1), name, rank))
        return
    if rank < len(gains):
        heapq.heappush(heap, (-gains[rank] / width, name, rank))
