"""Batched, gradient-free forward passes that score the response tokens of examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from worker.engine.data import IGNORE_INDEX, Example, collate
from worker.engine.device import model_device
from worker.engine.math.nll import sequence_nll


@dataclass(frozen=True)
class Scored:
    """One example's summed response NLL and loss-token count; with ``first_logprobs``, the
    ``(V,)`` log-softmax of the logits that predict the first response token."""

    nll_sum: float
    n_tokens: int
    first_logprobs: torch.Tensor | None = None


@torch.no_grad()
def score_examples(
    model: nn.Module,
    examples: Sequence[Example],
    pad_id: int,
    batch_size: int = 8,
    first_logprobs: bool = False,
) -> list[Scored]:
    """Score each example, returned in input order.

    Examples are batched by length (less padding); right padding with an attention mask leaves
    every real position's logits exactly as an unpadded forward gives them (up to float noise).
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    device = model_device(model)
    out: dict[int, Scored] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([examples[i] for i in idx], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sums, counts = sequence_nll(logits, batch["labels"])
        for row, i in enumerate(idx):
            first = None
            if first_logprobs:
                pos = next(t for t, y in enumerate(examples[i].labels) if y != IGNORE_INDEX)
                first = torch.log_softmax(logits[row, pos - 1].float(), dim=-1) if pos else None
            out[i] = Scored(
                float(sums[row]), int(counts[row]), first.cpu() if first is not None else None
            )
    return [out[i] for i in range(len(examples))]
