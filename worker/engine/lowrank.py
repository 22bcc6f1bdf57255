"""The low-rank linear layer that replaces a target ``nn.Linear`` in a proxy."""

from __future__ import annotations

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """``y = A (B x) + b`` with ``A: (out, r)``, ``B: (r, in)``, optional bias ``b: (out,)``.

    Drop-in for ``nn.Linear`` (same ``in_features``/``out_features``/``weight``-free forward).
    Parameters are named ``A`` and ``B`` so that gradients and saved tensors read like the paper.
    """

    def __init__(
        self,
        A: torch.Tensor,
        B: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
            raise ValueError(f"factor shapes do not chain: A {tuple(A.shape)}, B {tuple(B.shape)}")
        self.out_features = int(A.shape[0])
        self.in_features = int(B.shape[1])
        self.rank = int(A.shape[1])
        self.A = nn.Parameter(A.detach().clone())
        self.B = nn.Parameter(B.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.linear(x, self.B), self.A, self.bias)

    def dense_weight(self) -> torch.Tensor:
        """``A @ B``: (out, in). For tests and diagnostics, never on a hot path."""
        return self.A @ self.B

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )


def parameter_count(module: nn.Module) -> int:
    """Number of scalar parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
