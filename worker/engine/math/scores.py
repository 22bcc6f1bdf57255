"""Scores between projected training and target-task gradients (TracIn, influence functions).

All functions take feature matrices whose rows are samples: ``G: (n, d)``. Aggregation over a
target set by the mean is linear, so ``mean_j <g_i, t_j> = <g_i, mean_j t_j>``: a target set
collapses to one ``d``-vector and scoring a block of the pool is one matrix-vector product. Nothing
here ever needs an ``n_train x n_target`` matrix. TracIn over checkpoints (``sum_c lr_c
score_c``) is a weighted sum of such scores (``worker/engine/pipeline.py``; its twin is in
``tests/engine/scoring/test_checkpoints.py``).
"""

from __future__ import annotations

import torch


def l2_normalize(G: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``G: (n, d)`` scaled to unit length, and their norms ``(n,)``.

    A zero row stays zero (its cosine with anything is defined as 0).
    """
    norms = G.norm(dim=1)
    return G / norms.clamp_min(eps).unsqueeze(1), norms


def target_direction(T: torch.Tensor) -> torch.Tensor:
    """Mean of a target set's feature rows ``T: (m, d)`` -> ``(d,)``; ``<g, mean(T)>`` is the mean
    score of ``g`` over the target set."""
    if T.ndim != 2 or T.shape[0] == 0:
        raise ValueError(f"target features must be a non-empty (m, d) matrix, got {tuple(T.shape)}")
    return T.float().mean(dim=0)


class CurvatureAccumulator:
    """Streams ``F = G^T G / n`` over blocks of the pool's features ``G: (n, d)``."""

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, G: torch.Tensor) -> None:
        """Accumulate a block ``G: (b, d)``."""
        g = G.double()
        self.gram += g.T @ g
        self.count += int(G.shape[0])

    def matrix(self) -> torch.Tensor:
        """``G^T G / n``: ``(d, d)`` float64."""
        if self.count == 0:
            raise ValueError("no training features were accumulated")
        return self.gram / self.count


def influence_direction(F: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """``(F + damping I)^{-1} v`` by Cholesky; ``F: (d, d)`` symmetric PSD, ``v: (d,)``.

    Then ``<g_train, result>`` is the influence-function score ``v^T (F + lambda I)^{-1} g_train``
    (``F`` symmetric). ``damping`` must be positive, which keeps the system positive definite.
    """
    if damping <= 0:
        raise ValueError(f"damping must be positive, got {damping}")
    eye = torch.eye(F.shape[0], dtype=torch.float64, device=F.device)
    chol = torch.linalg.cholesky(F.double() + damping * eye)
    return torch.cholesky_solve(v.double().unsqueeze(1), chol).squeeze(1).float()


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """0-based ranks of ``x: (n,)`` in ascending order, tied values sharing the mean of their
    positions: ``(n,)`` float64 (``[1, 3, 3, 7] -> [0, 1.5, 1.5, 3]``)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return ((2 * ends - counts.double() - 1) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two ``(n,)`` score vectors: the Pearson correlation of their
    :func:`average_ranks` (ties averaged). NaN when either vector is constant (no ranking)."""
    if x.shape != y.shape or x.ndim != 1 or x.numel() < 2:
        raise ValueError("need two score vectors of the same length >= 2")
    rx = average_ranks(x)
    ry = average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = rx.norm() * ry.norm()
    if float(denom) == 0.0:
        return float("nan")
    return float((rx @ ry) / denom)


def top_overlap(x: torch.Tensor, y: torch.Tensor, fraction: float) -> float:
    """Fraction of ``x``'s top ``fraction`` (``k = max(1, round(fraction * n))`` items of the
    ``(n,)`` vectors) that is also in ``y``'s top ``k``. Ties at the cut go to the lower index,
    so the result is deterministic."""
    if x.shape != y.shape or x.ndim != 1 or x.numel() < 1:
        raise ValueError("need two non-empty score vectors of the same length")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * x.numel()))
    a = set(_top_indices(x, k))
    b = set(_top_indices(y, k))
    return len(a & b) / k


def _top_indices(x: torch.Tensor, k: int) -> list[int]:
    # Descending by value, ascending by index among equals (a stable sort of the negation).
    return torch.argsort(-x.double(), stable=True)[:k].tolist()
