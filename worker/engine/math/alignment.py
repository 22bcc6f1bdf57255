"""Gradient alignment in factor space (the ``L_GA`` term of proxy alignment).

For ``W = A B`` the chain rule gives ``dL/dA = (dL/dW) B^T`` and ``dL/dB = A^T (dL/dW)``. The
target's weight gradient, pushed through the same maps, says where the proxy's factor gradients
should point; ``L_GA`` is one minus their cosine, taken per factor and averaged.
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


def factor_cosines(
    grad_A: torch.Tensor,
    grad_B: torch.Tensor,
    target_A: torch.Tensor,
    target_B: torch.Tensor,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos(grad_A, target_A), cos(grad_B, target_B))``, each pair flattened; two scalar
    tensors in at least float32 (bfloat16 gradients are summed in float32), differentiable in
    the ``grad_*`` arguments.

    One cosine per factor, as the authors' ``L_GA`` takes them: a cosine over the two factors
    concatenated would be decided by whichever factor holds more of the gradient's norm, which
    the factor gauge (an arbitrary split of scale between ``A`` and ``B``) sets.
    """
    return _cosine(grad_A, target_A, eps), _cosine(grad_B, target_B, eps)


def _cosine(g: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    g, t = _wide(g), _wide(t)
    dot = (g * t).sum()
    return dot / (g.square().sum().sqrt() * t.square().sum().sqrt()).clamp_min(eps)


def gradient_alignment_loss(cosines: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``L_GA = mean over layers of 0.5 [(1 - cos_A) + (1 - cos_B)]``, in ``[0, 2]``.

    ``cosines``: one ``(cos_A, cos_B)`` pair per layer (see :func:`factor_cosines`).
    """
    if not cosines:
        raise ValueError("no layer to align")
    per_layer = [0.5 * ((1.0 - ca) + (1.0 - cb)) for ca, cb in cosines]
    return torch.stack(per_layer).mean()


def sample_gram(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``K_ij = <G_i, G_j>`` of the per-sample gradients ``G_i = sum_t left_it right_it^T`` of
    one linear map, without forming them: ``K_ij = sum_{t, s} (l_it . l_js)(r_it . r_js)``.

    ``left: (B, T, p)`` (output-side vectors, e.g. output gradients), ``right: (B, T, q)``
    (input-side vectors) -> ``(B, B)`` in at least float32, differentiable in both. Costs
    ``O((B T)^2 (p + q))``, cheaper than forming ``B`` gradients of ``p x q`` when
    ``B T < p q / (p + q)``.
    """
    b, t = left.shape[:2]
    L = _wide(left).reshape(b * t, -1)
    R = _wide(right).reshape(b * t, -1)
    M = (L @ L.T) * (R @ R.T)  # (BT, BT)
    return M.reshape(b, t, b, t).sum(dim=(1, 3))


def cosine_matrix(K: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """``K_ij / sqrt(K_ii K_jj)`` for a Gram matrix ``K: (B, B)`` -> ``(B, B)``."""
    d = K.diagonal().clamp_min(eps).sqrt()
    return K / (d[:, None] * d[None, :])


def gram_alignment_loss(proxy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the off-diagonal entries of two ``(B, B)`` cosine matrices
    (:func:`cosine_matrix`), in ``[0, 4]``: how far the proxy's per-sample gradient geometry is
    from the target's (``B >= 2``)."""
    b = proxy.shape[0]
    if b < 2 or proxy.shape != target.shape:
        raise ValueError(f"need two (B, B) matrices with B >= 2, got {tuple(proxy.shape)}")
    off = ~torch.eye(b, dtype=torch.bool, device=proxy.device)
    return (proxy - target.detach())[off].square().mean()


def output_gradient_error(
    proxy: Sequence[torch.Tensor], target: Sequence[torch.Tensor], eps: float = 1e-30
) -> torch.Tensor:
    """``L_delta``: how far a proxy's per-token output gradients point from the target's.

    ``proxy[l]``, ``target[l]``: ``(B, T, out_l)`` output gradients ``dL/dy`` of layer ``l``
    (zero at positions without loss influence, e.g. right padding). Per layer and record,
    ``1 - cos`` between the two record's gradients taken whole (``T x out``: the tokens' relative
    weights count, the record's overall scale does not); the mean over layers and records -> a
    scalar in ``[0, 2]``, at least float32, differentiable in ``proxy`` (``target`` is
    detached). Each record's per-sample gradient of a layer is ``sum_t d_t h_t^T``: when the
    ``d`` match, the gradients differ only through the inputs ``h``. A cosine, not a relative
    squared error: where the two are nearly orthogonal (early layers of a compressed proxy) a
    squared error is lowered most by shrinking the proxy's gradients toward zero, which moves
    no direction. A record whose target gradient vanishes at a layer is left out of that
    layer's mean.
    """
    if not proxy or len(proxy) != len(target):
        raise ValueError(f"need one target per proxy layer, got {len(proxy)} and {len(target)}")
    per_layer = []
    for p, t in zip(proxy, target, strict=True):
        if p.shape != t.shape or p.dim() != 3:
            raise ValueError(
                f"need two (B, T, out) tensors, got {tuple(p.shape)}, {tuple(t.shape)}"
            )
        p, t = _wide(p).flatten(1), _wide(t.detach()).flatten(1)
        ref = t.square().sum(dim=1)
        live = ref > eps
        if bool(live.any()):
            dot = (p * t).sum(dim=1)
            cos = dot / (p.square().sum(dim=1) * ref).sqrt().clamp_min(eps)
            per_layer.append((1.0 - cos[live]).mean())
    if not per_layer:
        raise ValueError("every target output gradient is zero")
    return torch.stack(per_layer).mean()
