"""Write a tiny Llama as a GGUF file (float32 tensors + a byte-level BPE tokenizer).

Lets the GGUF path of the model loader (transformers' dequantising reader, then our safetensors
cache) run in a second instead of the ~50 s the real SmolLM2 file takes. Tensor names and the
q/k row permutation follow llama.cpp's converter, which transformers' reader undoes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter

from tests.tiny import tiny_model

_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary-layout permutation of q/k rows."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    _, _, idx, rest = name.split(".", 3)
    module = rest.rsplit(".", 1)[0]
    return f"blk.{idx}.{_LAYER[module]}.weight"


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> tuple[Path, Any, Any]:
    """Write ``path``; return it with the (HF model, tokenizer) it encodes."""
    model, tok = tiny_model("llama", seed)
    cfg = model.config
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    special = set(tok.all_special_ids)
    w.add_token_types([3 if i in special else 1 for _, i in vocab])  # 3 = control
    w.add_token_scores([0.0] * len(vocab))  # no merges: a byte-level vocabulary has none
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings
        arr = tensor.detach().numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            arr = _permute(arr, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            arr = _permute(arr, cfg.num_key_value_heads)
        w.add_tensor(_gguf_name(name), arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, model, tok
