"""Which linear layers a proxy compresses and a scorer differentiates: chosen by name suffix.

One rule for both (a suffix matches a whole name component, so ``proj`` does not match
``q_proj``) and one default, so that a proxy and the scorer that reads it agree on the layers.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

DEFAULT_LAYERS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
"""The attention and MLP projections of Llama-style decoders (Llama, Qwen, SmolLM, Mistral)."""


def named_layers(
    model: nn.Module, suffixes: Sequence[str], kinds: tuple[type[nn.Module], ...]
) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every module of one of ``kinds`` whose last name
    component is one of ``suffixes``, in module order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, kinds) and name.rsplit(".", 1)[-1] in suffixes
    ]
