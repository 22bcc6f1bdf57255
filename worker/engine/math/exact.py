"""Exact inner products and norms of per-sample linear-layer gradients, never forming them.

For a linear map applied at tokens ``t`` of one sample, the sample's gradient of the map's matrix
is a sum of outer products ``G = sum_t l_t r_t^T`` (``l_t``: the output-side vector, ``r_t``: the
input-side one; for ``y = W h``, ``l_t = dL/dy_t`` and ``r_t = h_t``). Then, per sample:

- the inner product with a fixed matrix ``V`` is ``<G, V> = sum_t l_t^T (V r_t)``: one matmul of
  the size of the layer's forward;
- the squared norm is ``|G|^2 = sum_{t,s} (l_t . l_s)(r_t . r_s)``, the elementwise product of two
  ``T x T`` Gram matrices, which costs ``T^2 (rows + cols)`` against ``T rows cols`` for forming
  ``G``; :func:`use_gram` picks the cheaper side.

Padding contributes nothing as long as one side is zero at padded positions (callers mask ``r``).
A low-rank layer ``y = A (B h)`` is two such maps: ``A`` with ``(l, r) = (delta, B h)`` and ``B``
with ``(l, r) = (A^T delta, h)``.
"""

from __future__ import annotations

import torch


def use_gram(tokens: int, rows: int, cols: int) -> bool:
    """True when the Gram form of :func:`sq_norms` is cheaper than forming the gradient:
    ``T^2 (rows + cols) <= T rows cols``."""
    return tokens * (rows + cols) <= rows * cols


FORMED_COST = 2.0
"""Cost of one FLOP of forming per-sample gradients (a batched matmul whose inner dimension is
a sample's length, writing ``batch x rows x cols`` floats) in units of one FLOP of the Gram
route's matmuls (one ``(batch T) x cols`` by ``cols x rows`` product, as in the forward). Set
from one-off side-by-side timings on SmolLM2 at 64 tokens, batch 8, 2 CPU threads (a script
outside the repository, not a recorded benchmark): forming took about 1.9x the time of the
weight-gradient matmuls it replaces, and with one target task and the same hooks the Gram
route scored 1.13x a bare forward+backward against 1.25x formed (3 repeats). The recorded cost of the default is
bench:score in docs/benchmarks.md. A constant, not a timing taken at run time: the route, and
so the rounding of every score, depends only on shapes and the task count."""


def form_for_scores(tokens: int, rows: int, cols: int, tasks: int) -> bool:
    """True when forming each sample's gradient is cheaper than the Gram route for the inner
    products with ``tasks`` matrices and the squared norm, per sample:
    ``FORMED_COST T rows cols + (tasks + 1) rows cols`` (form ``G``, then a dot per task and
    the norm) against ``tasks T rows cols + T^2 (rows + cols)`` (a ``V r_t`` per task and
    token, two Grams). With one task the Gram route wins up to
    ``T = (FORMED_COST - 1) rows cols / (rows + cols)`` tokens (288 for a square 576-wide
    layer); with two or more, forming wins from a few tokens on."""
    formed = FORMED_COST * tokens * rows * cols + (tasks + 1) * rows * cols
    gram = tasks * tokens * rows * cols + tokens * tokens * (rows + cols)
    return formed <= gram


def scores_of_formed(
    left: torch.Tensor, right: torch.Tensor, V: torch.Tensor, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(<G_i, V_k> (batch, K), |G_i|^2 (batch,))`` from the formed per-sample gradients, a tile
    of rows at a time for the whole batch, so at most about ``budget`` floats of ``G`` exist at
    once (at least one row of every sample).

    Each tile ``G[:, a:b, :]`` is formed, dotted with ``V[:, a:b, :]`` and normed while it is
    still in cache, and each tile of ``V`` is read once for the batch (forming one sample at a
    time instead would read all of ``V`` once per sample).

    Args:
        left: ``(batch, T, rows)``; right: ``(batch, T, cols)``; V: ``(K, rows, cols)``.
    """
    n, rows, cols = left.shape[0], left.shape[2], right.shape[2]
    tile = max(1, min(rows, budget // max(1, n * cols)))
    lt = left.transpose(1, 2).contiguous()  # (batch, rows, T): row tiles are contiguous
    inner = torch.zeros(n, V.shape[0], dtype=left.dtype, device=left.device)
    sq = torch.zeros(n, dtype=left.dtype, device=left.device)
    for a in range(0, rows, tile):
        b = min(rows, a + tile)
        g = torch.bmm(lt[:, a:b], right).reshape(n, -1)  # (batch, (b - a) cols)
        inner += g @ V[:, a:b].reshape(V.shape[0], -1).T
        # one read of g (pow().sum() would write g^2 first: measured 4x slower on CPU)
        sq += torch.linalg.vector_norm(g, dim=1).square()
    return inner, sq


def per_sample_grads(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``G_i = sum_t l_t r_t^T`` for every sample.

    Args:
        left: ``(batch, T, rows)``; right: ``(batch, T, cols)``.

    Returns:
        ``(batch, rows, cols)``.
    """
    return torch.bmm(left.transpose(1, 2), right)


def sq_norms(left: torch.Tensor, right: torch.Tensor, gram: bool | None = None) -> torch.Tensor:
    """``|G_i|_F^2`` per sample for ``G_i = sum_t l_t r_t^T``.

    Args:
        left: ``(batch, T, rows)``; right: ``(batch, T, cols)``.
        gram: force the Gram form (True) or the formed gradient (False); ``None`` picks the
            cheaper (:func:`use_gram`). Both give the same number up to rounding.

    Returns:
        ``(batch,)``.
    """
    tokens, rows, cols = left.shape[1], left.shape[2], right.shape[2]
    if gram is None:
        gram = use_gram(tokens, rows, cols)
    if gram:
        ll = torch.bmm(left, left.transpose(1, 2))
        rr = torch.bmm(right, right.transpose(1, 2))
        return (ll * rr).sum(dim=(1, 2))
    return per_sample_grads(left, right).pow(2).sum(dim=(1, 2))


def inner_products(left: torch.Tensor, right: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``<G_i, V_k> = sum_t l_t^T V_k r_t`` for every sample ``i`` and matrix ``k``.

    Args:
        left: ``(batch, T, rows)``; right: ``(batch, T, cols)``.
        V: ``(K, rows, cols)``.

    Returns:
        ``(batch, K)``.
    """
    out = torch.empty(left.shape[0], V.shape[0], dtype=left.dtype, device=left.device)
    for k in range(V.shape[0]):  # K is the number of target tasks: a handful
        out[:, k] = ((left @ V[k]) * right).sum(dim=(1, 2))
    return out


def weighted_grad_sum(
    left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``sum_i w_i G_i = sum_{i,t} w_i l_{it} r_{it}^T``: one ``(rows, cols)`` matrix.

    Args:
        left: ``(batch, T, rows)``; right: ``(batch, T, cols)``; weights: ``(batch,)``.

    Returns:
        ``(rows, cols)``.
    """
    scaled = left * weights.to(left.dtype).view(-1, 1, 1)
    return scaled.reshape(-1, scaled.shape[-1]).T @ right.reshape(-1, right.shape[-1])
