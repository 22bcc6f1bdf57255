"""Activation checkpointing of a causal LM's decoder layers, for a stretch of code.

Inside :func:`checkpointed_layers`, each decoder layer keeps only its inputs during the forward
pass and recomputes its activations when the backward pass reaches it (non-reentrant
``torch.utils.checkpoint``), so activation memory grows with the number of layers' inputs
rather than with everything the layers compute. The price is one more forward of each layer.

The non-reentrant form supports ``torch.autograd.grad`` with ``create_graph=True``, so
alignment's double backward runs through it (the tests check the gradients are unchanged).
Forward hooks on modules inside a layer fire again during the recomputation: code that
captures activations with hooks (probe collection) must keep one capture per forward pass.
Models must run without a key/value cache here (``use_cache=False``), or the recomputation
would append to it a second time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a Hugging Face causal LM (the ``ModuleList`` of ``*DecoderLayer``)."""
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if type(module[0]).__name__.endswith("DecoderLayer"):
            return [m for m in module]
    return []


@contextmanager
def checkpointed_layers(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Checkpoint every decoder layer of ``model`` while inside; yields how many were wrapped
    (0 when ``enabled`` is false or the model has no recognisable decoder layers)."""
    layers = decoder_layers(model) if enabled else []
    wrapped = []
    for layer in layers:
        if "forward" in vars(layer):  # already wrapped by an enclosing call
            continue
        original = layer.forward

        def forward(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        layer.forward = forward  # type: ignore[method-assign]
        wrapped.append(layer)
    try:
        yield len(wrapped)
    finally:
        for layer in wrapped:
            del layer.forward
