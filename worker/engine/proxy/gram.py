"""The per-sample gradient geometry term of alignment (``gram_weight``).

``L_GA`` aligns the proxy's batch-mean gradient with the target's; scoring compares gradients
sample by sample. This term aligns what scoring uses: within a batch, the matrix of cosines
between the samples' gradients, the proxy's (in factor space, as a proxy is scored) against the
target's (in weight space), from per-token captures without forming a per-sample gradient
(:func:`worker.engine.math.alignment.sample_gram`). The proxy's side keeps its graph, so the
term's gradient is a double backward, like ``L_GA``'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from worker.engine.lowrank import LowRankLinear
from worker.engine.math.alignment import cosine_matrix, gram_alignment_loss, sample_gram
from worker.engine.proxy.lm import forward_logits, sequence_losses


@contextmanager
def _captured(
    modules: dict[str, nn.Module],
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Each module's first input and output of the next forward pass, by name."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def forward_hook(
            module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> None:
            if name not in inputs:  # a checkpointed layer's recomputation comes second
                inputs[name], outputs[name] = args[0], output

        return forward_hook

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()


def target_gram(
    target: nn.Module, names: Sequence[str], batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The target's logits ``(B, T, vocab)``, its per-sample gradient cosine matrix ``(B, B)``
    over the named layers' weights, and each layer's weight gradient of the batch-mean loss
    ``(out, in)`` (what ``L_GA`` needs), from one forward and one first-order backward."""
    modules = {n: target.get_submodule(n) for n in names}
    with torch.enable_grad(), _captured(modules) as (xs, ys):
        embeds = target.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)  # type: ignore[operator]
        logits = target(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        losses = sequence_losses(logits, batch["labels"])
        deltas = torch.autograd.grad(losses.sum(), [ys[n] for n in names])
    b = losses.shape[0]
    K = torch.zeros(b, b, dtype=torch.float32, device=logits.device)
    grads = []
    for n, d in zip(names, deltas, strict=True):
        h = xs[n].detach()
        K = K + sample_gram(d, h)
        grads.append(torch.einsum("bto,bti->oi", _wide(d), _wide(h)) / b)
    return logits.detach(), cosine_matrix(K), grads


def proxy_gram(
    proxy: nn.Module, layers: dict[str, LowRankLinear], batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The proxy's logits, its per-sample gradient cosine matrix over the factors ``(B, B)``
    and each factor's gradient of the batch-mean loss (``A``, ``B`` per layer in order), all
    differentiable in the factors (a graph through the backward pass)."""
    with _captured(dict(layers)) as (xs, ys):
        logits = forward_logits(proxy, batch)
        losses = sequence_losses(logits, batch["labels"])
        deltas = torch.autograd.grad(losses.sum(), [ys[n] for n in layers], create_graph=True)
    b = losses.shape[0]
    K = torch.zeros(b, b, dtype=torch.float32, device=logits.device)
    grads: list[torch.Tensor] = []
    for (n, mod), d in zip(layers.items(), deltas, strict=True):
        x = xs[n]
        u = x @ mod.B.T  # (B, T, r): the rank-space input of A
        v = d @ mod.A  # (B, T, r): the rank-space output gradient of B
        K = K + sample_gram(d, u) + sample_gram(v, x)
        grads.append(torch.einsum("bto,btr->or", _wide(d), _wide(u)) / b)
        grads.append(torch.einsum("btr,bti->ri", _wide(v), _wide(x)) / b)
    return logits, cosine_matrix(K), grads


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def gram_loss(proxy_cos: torch.Tensor, target_cos: torch.Tensor) -> torch.Tensor:
    """The term itself (see :func:`worker.engine.math.alignment.gram_alignment_loss`)."""
    return gram_alignment_loss(proxy_cos, target_cos)
