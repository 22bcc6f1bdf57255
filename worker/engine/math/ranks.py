"""Rank of a low-rank factorisation from a target sparsity (fraction of parameters removed)."""

from __future__ import annotations


def rank_for_sparsity(
    out_features: int, in_features: int, sparsity: float, multiple: int = 1
) -> int | None:
    """The rank ``r`` whose factors ``A: (out, r)``, ``B: (r, in)`` keep about ``(1 - rho) out in``.

    ``r = floor((1 - rho) * out * in / (out + in))``, then rounded down to a multiple of
    ``multiple`` (``1``: no rounding). Returns ``None`` when the layer should stay dense: the rank
    would be zero, or the factors would hold at least as many parameters as the dense weight.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if multiple < 1:
        raise ValueError(f"rank multiple must be at least 1, got {multiple}")
    if out_features < 1 or in_features < 1:
        raise ValueError(f"layer shape must be positive, got ({out_features}, {in_features})")
    dense = out_features * in_features
    r = int((1.0 - sparsity) * dense // (out_features + in_features))
    r -= r % multiple
    if r < 1 or r * (out_features + in_features) >= dense:
        return None
    return r


def factor_parameters(out_features: int, in_features: int, rank: int) -> int:
    """Parameters held by ``A: (out, r)`` and ``B: (r, in)`` (bias not included)."""
    return rank * (out_features + in_features)
