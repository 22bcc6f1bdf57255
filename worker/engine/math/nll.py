"""Per-sequence negative log-likelihood of the loss-bearing tokens, and the mean's standard error.

Causal LM convention: the logits at position ``t`` predict the token at ``t + 1``, and labels
equal to ``ignore_index`` (prompt tokens, padding) carry no loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def sequence_nll(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and token count per sequence.

    Args:
        logits: ``(B, T, V)`` next-token logits.
        labels: ``(B, T)`` token ids aligned with the *inputs* (not shifted); ``ignore_index``
            marks positions without loss.

    Returns:
        ``(nll_sum, n_tokens)``, both ``(B,)``: ``nll_sum[b] = -sum_t log p(labels[b, t+1] |
        prefix)`` over loss-bearing ``t + 1``, in float32 whatever the logits' dtype, and the
        number of such tokens (float, so that division needs no cast).
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    shift_labels = labels[:, 1:]
    mask = shift_labels != ignore_index
    # Only loss-bearing positions go through the softmax: prompts are often most of a sequence,
    # and a (B, T, V) log-softmax of a 49k vocabulary is the largest tensor of a step.
    rows, cols = mask.nonzero(as_tuple=True)
    token_nll = F.cross_entropy(
        logits[rows, cols].float(), shift_labels[rows, cols], reduction="none"
    )
    nll_sum = torch.zeros(labels.shape[0], dtype=torch.float32, device=logits.device)
    nll_sum = nll_sum.index_add(0, rows, token_nll)
    return nll_sum, mask.sum(dim=1).float()


def response_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean NLL over each sequence's loss-bearing tokens: the per-sample loss, ``(B,)``.

    Shapes as in :func:`sequence_nll`. Every sequence weighs the same however long its response
    is (LESS's normalisation), and the sum over a batch has each sample's own loss gradient.
    Raises ``ValueError`` naming the first row without a loss-bearing token.
    """
    nll_sum, n_tokens = sequence_nll(logits, labels, ignore_index)
    empty = (n_tokens == 0).nonzero()
    if empty.numel():
        raise ValueError(f"batch row {int(empty[0, 0])}: no response token to compute a loss on")
    return nll_sum / n_tokens


def token_mean_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Scalar mean NLL over every loss-bearing token of the batch (the training objective).

    Shapes as in :func:`sequence_nll`. Raises ``ValueError`` when no token carries loss, rather
    than returning NaN and letting a step silently do nothing.
    """
    nll_sum, n_tokens = sequence_nll(logits, labels, ignore_index)
    total = n_tokens.sum()
    if total.item() == 0:
        raise ValueError("the batch has no loss-bearing token")
    return nll_sum.sum() / total


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Sample mean and its standard error ``s / sqrt(n)`` (``s`` with ``n - 1``; 0 when n = 1)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_and_se of no values")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
