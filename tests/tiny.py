"""Tiny real transformer architectures with random weights, and a byte-level tokenizer.

Built from small configs so engine tests run in seconds on two cores. ``save_tiny_model`` writes a
Hugging Face directory (weights + tokenizer with a chat template) that the model loader, the CLI
and the service can all open like any local model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

Arch = Literal["llama", "gemma3", "qwen2"]
ARCHES: tuple[Arch, ...] = ("llama", "gemma3", "qwen2")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (256 byte tokens + specials) with a ChatML chat template."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML
    return fast


def tiny_config(arch: Arch, vocab_size: int, **overrides: Any) -> Any:
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    return Gemma3TextConfig(head_dim=8, sliding_window=64, **common)


def tiny_model(
    arch: Arch = "llama", seed: int = 0, **overrides: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised tiny causal LM of ``arch`` and the matching tokenizer (eval mode)."""
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = tiny_config(arch, vocab_size=len(tok), **overrides)
    cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "gemma3": Gemma3ForCausalLM}[arch]
    model = cls(cfg).eval()
    return model, tok


def save_tiny_model(path: Path, arch: Arch = "llama", seed: int = 0) -> Path:
    """Write a tiny model + tokenizer as a local Hugging Face directory and return it."""
    model, tok = tiny_model(arch, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
