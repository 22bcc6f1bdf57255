"""Multiple-choice scoring (MMLU): which of the four options does the model prefer?

Two ways, both from the likelihood of the option responses ``"<letter>. <text>"`` (the form the
MMLU reader gives the reference answer) after the record's prompt:

* ``"letter"``: the log-probability of each option's first response token (its letter) at the
  position where the response starts, the protocol of the original MMLU evaluation. It comes out
  of the same forward pass as the reference NLL, so accuracy costs nothing extra.
* ``"option"``: the summed log-likelihood of each whole option response; one extra forward of
  four sequences per record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from worker.engine.data import IGNORE_INDEX, Example, Record, encode, pad_token_id
from worker.engine.errors import DataFormatError
from worker.engine.train.forward import score_examples

LETTERS = ("A", "B", "C", "D")
ChoiceScoring = Literal["letter", "option"]


def choices_of(record: Record) -> tuple[list[str], str] | None:
    """``(choices, answer letter)`` of a multiple-choice record; ``None`` for other records."""
    f: Mapping[str, Any] = record.fields
    choices, answer = f.get("choices"), f.get("answer")
    if not isinstance(choices, list) or not isinstance(answer, str):
        return None
    if len(choices) != len(LETTERS) or answer not in LETTERS:
        raise DataFormatError(
            f"record {record.index} (id {record.id!r}): multiple choice needs 4 'choices' and an "
            f"'answer' in A-D, got {len(choices)} choices and answer {answer!r}"
        )
    return [str(c).strip() for c in choices], answer


def option_examples(
    record: Record, choices: Sequence[str], tokenizer: Any, max_length: int
) -> list[Example]:
    """The record once per option, with the response ``"<letter>. <text>"``."""
    return [
        encode(dataclasses.replace(record, response=f"{letter}. {text}"), tokenizer, max_length)
        for letter, text in zip(LETTERS, choices, strict=True)
    ]


def first_response_position(example: Example) -> int:
    """Index of the first loss-bearing token (the response's first token)."""
    return next(i for i, t in enumerate(example.labels) if t != IGNORE_INDEX)


def letter_tokens(options: Sequence[Example]) -> list[int] | None:
    """Each option's first response token, when letter scoring is well defined.

    That needs every option to share the same prefix up to its response, and the first
    response tokens to differ; otherwise ``None`` (use whole-option scoring).
    """
    starts = [first_response_position(o) for o in options]
    if len(set(starts)) != 1 or starts[0] == 0:
        return None
    s = starts[0]
    if any(o.input_ids[:s] != options[0].input_ids[:s] for o in options):
        return None
    firsts = [o.input_ids[s] for o in options]
    return firsts if len(set(firsts)) == len(firsts) else None


def letter_scores(first_logprobs: torch.Tensor, tokens: Sequence[int]) -> list[float]:
    """Log-probabilities of the option letters.

    Args:
        first_logprobs: ``(V,)`` log-softmax of the logits that predict the first response token.
        tokens: each option's first response token id.
    """
    return [float(first_logprobs[t]) for t in tokens]


@torch.no_grad()
def option_logprobs(
    model: nn.Module, tokenizer: Any, record: Record, choices: Sequence[str], max_length: int
) -> list[float]:
    """Summed log-likelihood of each whole option response, the four in one batch."""
    examples = option_examples(record, choices, tokenizer, max_length)
    scored = score_examples(model, examples, pad_token_id(tokenizer), batch_size=len(examples))
    return [-s.nll_sum for s in scored]


def pick(scores: Sequence[float]) -> str:
    """The letter of the highest score (the first on ties)."""
    return LETTERS[max(range(len(scores)), key=scores.__getitem__)]
