"""The factor gauge: ``A B = (A D) (D^-1 B)`` for any positive diagonal ``D``.

A factorisation fixes the product, not how its scale is split between the factors. IPSVD's
``A = C_delta^-1/2 U sqrt(S)`` carries the inverse root of the output-gradient covariance,
and output gradients are tiny, so on real probes ``|A|`` is 70-290 times ``|B|``. Nothing in
the model's function sees the split, but everything that looks at factor gradients does:
``dL/dA = (dL/dW) B^T`` and ``dL/dB = A^T dL/dW`` scale inversely with their factor, so a
lopsided pair puts almost all of the factor-space gradient in one factor (what alignment's
cosine and Adam's per-entry steps then see, and what scoring's features are made of).

The balanced gauge gives each rank component the same norm in both factors:
``|a_i| = |b_i| = sqrt(|a_i| |b_i|)`` for column ``a_i`` of ``A`` and row ``b_i`` of ``B``.
"""

from __future__ import annotations

import torch


def balance_factors(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A D, D^-1 B)`` with ``D = diag(sqrt(|b_i| / |a_i|))``: ``A: (out, r)``, ``B: (r, in)``.

    The product ``A B`` is unchanged (up to rounding); each column of the new ``A`` has the
    norm of the matching row of the new ``B``. A component with a zero factor is left as it
    is (its product is zero either way). Computed in at least float32, returned in the
    inputs' dtype.
    """
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"factor shapes do not chain: A {tuple(A.shape)}, B {tuple(B.shape)}")
    wide = torch.promote_types(A.dtype, torch.float32)
    a, b = A.to(wide), B.to(wide)
    norm_a = torch.linalg.vector_norm(a, dim=0)  # (r,)
    norm_b = torch.linalg.vector_norm(b, dim=1)  # (r,)
    both = (norm_a > 0) & (norm_b > 0)
    scale = torch.where(both, (norm_b / norm_a.where(both, 1.0)).sqrt(), 1.0)
    return (a * scale).to(A.dtype), (b / scale[:, None]).to(B.dtype)


def gauge_imbalance(A: torch.Tensor, B: torch.Tensor) -> float:
    """``|A|_F / |B|_F``: 1 for a balanced pair; a diagnostic for manifests and tests."""
    norm_b = float(torch.linalg.matrix_norm(B.float()))
    return float(torch.linalg.matrix_norm(A.float())) / norm_b if norm_b > 0 else float("inf")
