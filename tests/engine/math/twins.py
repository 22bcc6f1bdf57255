"""Naive twins of the math kernels: dense, explicit and only for tiny shapes."""

from __future__ import annotations

import torch


def dense_kron_project(grad: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Twin of :func:`worker.engine.math.projection.kron_features`: ``(left (x) right) vec(grad)``
    for a materialised gradient ``grad: (out, in)``; returns ``(k_out * k_in,)``. Forms the dense
    Kronecker matrix, so only for tests on tiny layers."""
    return torch.kron(left, right) @ grad.reshape(-1)
