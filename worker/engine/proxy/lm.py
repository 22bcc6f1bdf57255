"""Causal-LM helpers shared by probing, alignment and evaluation: losses over response tokens.

Position ``t`` of the logits predicts token ``t + 1``; a position carries loss when the label
of the next token is not ``IGNORE_INDEX`` (a response token).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def hidden_state_error(
    target_hidden: Sequence[torch.Tensor], proxy_hidden: Sequence[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """Mean over layers and the positions in ``mask`` of ``|h_p - h_t|^2 / |h_t|^2``.

    ``*_hidden``: one ``(batch, seq, hidden)`` tensor per layer, in the same order;
    ``mask: (batch, seq)`` bool. Each position's error is relative to its own target norm, so
    neither the residual stream's growth with depth nor a few positions' massive activations
    (a first token's norm can be hundreds of times the rest) decide the sum. Target states
    carry no gradient.
    """
    if len(target_hidden) != len(proxy_hidden):
        raise ValueError(f"{len(target_hidden)} target layers against {len(proxy_hidden)} proxy")
    if not target_hidden:
        raise ValueError("no hidden states to compare")
    errors = []
    for t, p in zip(target_hidden, proxy_hidden, strict=True):
        t_rows = t.detach()[mask].float()
        p_rows = p[mask].float()
        norms = t_rows.pow(2).sum(-1).clamp_min(torch.finfo(torch.float32).tiny)
        errors.append(((p_rows - t_rows).pow(2).sum(-1) / norms).mean())
    return torch.stack(errors).mean()


def forward_states(
    model: nn.Module, batch: dict[str, torch.Tensor], *, hidden: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Logits ``(batch, seq, vocab)`` and, with ``hidden``, each decoder layer's output
    ``(batch, seq, hidden)`` (the embeddings, the same in a proxy as in its target, left out;
    without ``hidden``, none), from one pass as :func:`forward_logits`'s."""
    if not hidden:
        return forward_logits(model, batch), ()
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
        output_hidden_states=True,
    )
    return out.logits, tuple(out.hidden_states[1:])


def forward_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(input_ids, attention_mask).logits``: (batch, seq, vocab). No key/value cache: a
    whole sequence is scored at once, and a checkpointed layer recomputing its forward must not
    append to a cache a second time."""
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    )
    return out.logits
