"""Tokenisation with response-only loss masks and explicit, response-preserving truncation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from worker.engine.data.records import Record
from worker.engine.errors import EmptyDatasetError, NoResponseTokensError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """A tokenised record: ``labels[i] == IGNORE_INDEX`` where position ``i`` carries no loss."""

    index: int
    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render(tokenizer: Any, record: Record) -> tuple[str, str]:
    """The record as (prompt text, response text) in the model's chat format.

    With a chat template, the response text is what the template appends after the generation
    prompt for the assistant turn (end-of-turn marker included), so the loss teaches the model
    to stop. Without one (or for plain-text records), turns are joined by blank lines and the
    response ends with the EOS token.
    """
    eos = tokenizer.eos_token or ""
    if record.plain:
        bos = tokenizer.bos_token if getattr(tokenizer, "add_bos_token", False) else ""
        return bos or "", record.response + eos
    if getattr(tokenizer, "chat_template", None):
        messages = [dict(m) for m in record.prompt]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": record.response}], tokenize=False
        )
        if full.startswith(prompt) and len(full) > len(prompt):
            return prompt, full[len(prompt) :]
        return prompt, record.response + eos
    bos = tokenizer.bos_token or ""
    prompt = "\n\n".join(m["content"] for m in record.prompt)
    return bos + (prompt + "\n\n" if prompt else ""), record.response + eos


def encode(record: Record, tokenizer: Any, max_length: int) -> Example:
    """Tokenise ``record``; at most ``max_length`` tokens, loss on response tokens only.

    Truncation keeps the response: the response keeps its first tokens, at least half the
    budget when the prompt is long; the prompt keeps its last tokens (the ones next to the
    response). Raises :class:`NoResponseTokensError` when no response token remains.
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    prompt_text, response_text = render(tokenizer, record)
    p = _encode(tokenizer, prompt_text) if prompt_text else []
    r = _encode(tokenizer, response_text) if record.response else []
    if not r:
        raise NoResponseTokensError(
            f"record {record.index} (id {record.id!r}): the response is empty, nothing to learn from"
        )
    truncated = len(p) + len(r) > max_length
    if truncated:
        r_keep = min(len(r), max_length - min(len(p), max_length // 2))
        p_keep = max_length - r_keep
        p = p[len(p) - p_keep :] if p_keep > 0 else []
        r = r[:r_keep]
    return Example(record.index, record.id, p + r, [IGNORE_INDEX] * len(p) + r, truncated)


def encode_all(
    records: Iterable[Record],
    tokenizer: Any,
    max_length: int,
    on_empty: Literal["raise", "skip"] = "raise",
) -> list[Example]:
    """Encode every record; ``on_empty="skip"`` drops records with no response token."""
    out = []
    for rec in records:
        try:
            out.append(encode(rec, tokenizer, max_length))
        except NoResponseTokensError:
            if on_empty == "raise":
                raise
    if not out:
        raise EmptyDatasetError("no record has a response token to learn from")
    return out


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding (EOS when the tokenizer has no pad token)."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pid) if pid is not None else 0


def collate(
    examples: Sequence[Example], pad_id: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask``, ``labels`` all (batch, max_len),
    made on ``device`` (one host-to-device copy per tensor)."""
    width = max(len(e.input_ids) for e in examples)
    ids, labels, mask = [], [], []
    for e in examples:
        pad = width - len(e.input_ids)
        ids.append(e.input_ids + [pad_id] * pad)
        labels.append(e.labels + [IGNORE_INDEX] * pad)
        mask.append([1] * len(e.input_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
        "labels": torch.tensor(labels, dtype=torch.long, device=device),
    }


def batches(examples: Sequence[Example], batch_size: int) -> Iterable[Sequence[Example]]:
    """Consecutive slices of ``examples`` of at most ``batch_size``."""
    for start in range(0, len(examples), batch_size):
        yield examples[start : start + batch_size]
