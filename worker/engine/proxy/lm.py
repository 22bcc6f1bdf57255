"""Causal-LM helpers shared by probing, alignment and evaluation: losses over response tokens.

Position ``t`` of the logits predicts token ``t + 1``; a position carries loss when the label
of the next token is not ``IGNORE_INDEX`` (a response token).
"""

from __future__ import annotations

import torch
from torch import nn

from worker.engine.data import IGNORE_INDEX
from worker.engine.math.nll import response_loss


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean ``(batch, seq)`` mask of logit positions that predict a response token."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def all_token_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Labels that put loss on every attended token (prompt included), as the authors' probes
    do: ``input_ids`` with padding set to ``IGNORE_INDEX``; ``(batch, seq)``."""
    return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)


def sequence_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each sequence's response tokens
    (:func:`worker.engine.math.nll.response_loss`).

    ``logits: (batch, seq, vocab)``, ``labels: (batch, seq)`` -> ``(batch,)``. Every sequence
    weighs the same however long its response is, as a per-sample loss should.
    """
    return response_loss(logits, labels, IGNORE_INDEX)


def temperature_kl(
    target_logits: torch.Tensor, proxy_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(z_t / T) || softmax(z_p / T))`` averaged over positions in ``mask``.

    ``*_logits: (batch, seq, vocab)``, ``mask: (batch, seq)`` bool. The ``T^2`` factor keeps the
    gradient scale independent of ``T`` (Hinton et al.). Target logits carry no gradient.
    """
    t = target_logits.detach()[mask].float() / temperature
    p = proxy_logits[mask].float() / temperature
    log_pt = torch.log_softmax(t, dim=-1)
    log_pp = torch.log_softmax(p, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_pp)).sum(dim=-1)
    return temperature**2 * kl.mean()


def forward_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(input_ids, attention_mask).logits``: (batch, seq, vocab). No key/value cache: a
    whole sequence is scored at once, and a checkpointed layer recomputing its forward must not
    append to a cache a second time."""
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    )
    return out.logits
