"""Gradient alignment in factor space (the ``L_GA`` term of proxy alignment).

For ``W = A B`` the chain rule gives ``dL/dA = (dL/dW) B^T`` and ``dL/dB = A^T (dL/dW)``. The
target's weight gradient, pushed through the same maps, says where the proxy's factor gradients
should point; ``L_GA`` is one minus their cosine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (bfloat16/float16 are widened; float64 stays)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def factor_space_targets(
    grad_W: torch.Tensor, A: torch.Tensor, B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_W B^T, A^T grad_W)``: ``grad_W: (out, in)``, ``A: (out, r)``, ``B: (r, in)`` ->
    ``(out, r)`` and ``(r, in)``, in at least float32 whatever the inputs' dtype. Factors are
    detached: targets carry no gradient."""
    g = _wide(grad_W)
    return g @ _wide(B.detach()).T, _wide(A.detach()).T @ g


def factor_cosine(
    grad_A: torch.Tensor,
    grad_B: torch.Tensor,
    target_A: torch.Tensor,
    target_B: torch.Tensor,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Cosine between ``(grad_A, grad_B)`` and ``(target_A, target_B)``, each pair flattened and
    concatenated into one vector; a scalar tensor in at least float32 (bfloat16 gradients are
    summed in float32), differentiable in the ``grad_*`` arguments."""
    grad_A, grad_B, target_A, target_B = map(_wide, (grad_A, grad_B, target_A, target_B))
    dot = (grad_A * target_A).sum() + (grad_B * target_B).sum()
    norm_g = (grad_A.square().sum() + grad_B.square().sum()).sqrt()
    norm_t = (target_A.square().sum() + target_B.square().sum()).sqrt()
    return dot / (norm_g * norm_t).clamp_min(eps)


def gradient_alignment_loss(cosines: Sequence[torch.Tensor]) -> torch.Tensor:
    """``L_GA = mean over layers of (1 - cosine)``, in ``[0, 2]``."""
    if not cosines:
        raise ValueError("no layer to align")
    return 1.0 - torch.stack(list(cosines)).mean()
