"""Naive twins of the scoring kernels: one unpadded sample at a time, full autograd gradients.

Slow and obviously right; every fast path in ``worker/engine/scoring`` is tested against these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tests.engine.math.twins import dense_kron_project
from worker.engine.scoring.gradients import GradBlock
from worker.engine.scoring.hooks import per_sample_loss
from worker.engine.scoring.precondition import AdamState


def per_sample_grads(
    model: nn.Module,
    params: Sequence[tuple[str, str]],
    batch: dict[str, torch.Tensor],
    adam: AdamState | None = None,
) -> list[list[torch.Tensor]]:
    """Per sample, the autograd gradient of each ``(module, param)`` (Adam's update direction
    under ``adam``), each sample run alone without its padding."""
    modules = dict(model.named_modules())
    tensors = [getattr(modules[m], p) for m, p in params]
    out = []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        logits = model(input_ids=batch["input_ids"][i : i + 1, :n], use_cache=False).logits
        loss = per_sample_loss(logits, batch["labels"][i : i + 1, :n]).sum()
        grads = list(torch.autograd.grad(loss, tensors))
        if adam is not None:
            for k, (m_name, p_name) in enumerate(params):
                m, v = adam.moments(m_name, modules[m_name], p_name)
                grads[k] = adam.update(grads[k], m, v)
        out.append(grads)
    return out


def naive_features(
    model: nn.Module,
    blocks: Sequence[GradBlock],
    batch: dict[str, torch.Tensor],
    adam: AdamState | None = None,
) -> torch.Tensor:
    """Twin of ``GradientFeaturizer``: the dense projection ``(p_left (x) p_right) vec(G)`` of
    every block's naive gradient, ``(n, dim)``."""
    grads = per_sample_grads(model, [(b.module, b.param) for b in blocks], batch, adam)
    return torch.stack(
        [
            torch.cat(
                [
                    dense_kron_project(g, b.p_left, b.p_right)
                    for g, b in zip(gs, blocks, strict=True)
                ]
            )
            for gs in grads
        ]
    )
