"""Evaluation: per-example NLL of the reference answer, and multiple-choice accuracy.

The main metric is the mean over examples of the per-token NLL of the reference response
(prompt tokens carry no loss): continuous, and sensitive to small changes at the scale this
project runs at. Multiple-choice accuracy (MMLU) is computed where records carry ``choices`` and
an ``answer`` letter: the model picks the option whose response ``"<letter>. <text>"`` (the form
the MMLU reader gives the reference) has the highest summed log-likelihood after the same prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from worker.engine.data import Example, Record, collate, encode, pad_token_id
from worker.engine.errors import DataFormatError, EmptyDatasetError, NoResponseTokensError
from worker.engine.math.nll import mean_and_se, sequence_nll
from worker.engine.progress import ProgressFn, StopFn, check_stop, report

STAGE = "evaluating"
LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class ExampleResult:
    """One record's result: summed and per-token NLL of its reference response."""

    index: int
    id: str
    nll_sum: float
    n_tokens: int
    truncated: bool
    predicted: str | None = None  # multiple choice: the letter the model picked
    correct: bool | None = None

    @property
    def nll(self) -> float:
        return self.nll_sum / self.n_tokens


@dataclass(frozen=True)
class EvalReport:
    """Aggregates over examples: mean +- standard error of per-token NLL (the main metric),
    of summed NLL, and accuracy where measured."""

    n: int
    nll: float
    nll_se: float
    nll_sum: float
    nll_sum_se: float
    token_nll: float  # total NLL / total tokens (long answers weigh more)
    accuracy: float | None
    accuracy_se: float | None
    skipped_ids: list[str]
    examples: list[ExampleResult] = field(repr=False)

    def to_dict(self, with_examples: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if with_examples:
            d["examples"] = [{**dataclasses.asdict(e), "nll": e.nll} for e in self.examples]
        else:
            del d["examples"]
        return d


@torch.no_grad()
def example_nll(
    model: nn.Module, examples: Sequence[Example], pad_id: int, batch_size: int = 8
) -> list[tuple[float, int]]:
    """``(summed NLL, loss-token count)`` of each example, in input order.

    Examples are batched by length (less padding); right padding with an attention mask leaves
    every real position's logits as they are without padding.
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([examples[i] for i in idx], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sums, counts = sequence_nll(logits, batch["labels"])
        for i, s, c in zip(idx, sums.tolist(), counts.tolist(), strict=True):
            out[i] = (float(s), int(c))
    return out


def _choices(record: Record) -> tuple[list[str], str] | None:
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


@torch.no_grad()
def option_logprobs(
    model: nn.Module, tokenizer: Any, record: Record, choices: Sequence[str], max_length: int
) -> list[float]:
    """Summed log-likelihood of each option's response ``"<letter>. <text>"`` after the prompt.

    All options go through the model as one batch.
    """
    options = [
        dataclasses.replace(record, response=f"{letter}. {text}")
        for letter, text in zip(LETTERS, choices, strict=True)
    ]
    examples = [encode(o, tokenizer, max_length) for o in options]
    sums = example_nll(model, examples, pad_token_id(tokenizer), batch_size=len(examples))
    return [-s for s, _ in sums]


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    max_length: int = 512,
    batch_size: int = 8,
    accuracy: Literal["auto", "never"] = "auto",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> EvalReport:
    """NLL of every record's reference response; accuracy where every record is multiple choice.

    Records whose response has no token left are skipped and listed. ``accuracy="auto"``
    measures accuracy when every record carries ``choices`` and ``answer`` (MMLU).
    """
    was_training = model.training
    model.eval()
    try:
        examples: list[Example] = []
        kept: list[Record] = []
        skipped: list[str] = []
        for r in records:
            try:
                examples.append(encode(r, tokenizer, max_length))
                kept.append(r)
            except NoResponseTokensError:
                skipped.append(r.id)
        if not examples:
            raise EmptyDatasetError("no evaluation record has a response token")
        pad = pad_token_id(tokenizer)
        nlls: list[tuple[float, int]] = []
        for start in range(0, len(examples), batch_size):
            check_stop(should_stop, STAGE)
            chunk = examples[start : start + batch_size]
            nlls.extend(example_nll(model, chunk, pad, batch_size))
            report(progress, STAGE, len(nlls), len(examples))
        mc = [_choices(r) for r in kept] if accuracy == "auto" else []
        measure = bool(mc) and all(c is not None for c in mc)
        results = []
        for i, (r, e, (s, n)) in enumerate(zip(kept, examples, nlls, strict=True)):
            predicted, correct = None, None
            if measure:
                check_stop(should_stop, STAGE)
                choices, answer = mc[i]  # type: ignore[misc]
                scores = option_logprobs(model, tokenizer, r, choices, max_length)
                predicted = LETTERS[max(range(len(scores)), key=scores.__getitem__)]
                correct = predicted == answer
            results.append(ExampleResult(r.index, r.id, s, n, e.truncated, predicted, correct))
        return _aggregate(results, skipped)
    finally:
        model.train(was_training)


def _aggregate(results: list[ExampleResult], skipped: list[str]) -> EvalReport:
    nll, nll_se = mean_and_se([r.nll for r in results])
    nll_sum, nll_sum_se = mean_and_se([r.nll_sum for r in results])
    token_nll = sum(r.nll_sum for r in results) / sum(r.n_tokens for r in results)
    acc = acc_se = None
    if results[0].correct is not None:
        acc, acc_se = mean_and_se([float(bool(r.correct)) for r in results])
    return EvalReport(
        n=len(results),
        nll=nll,
        nll_se=nll_se,
        nll_sum=nll_sum,
        nll_sum_se=nll_sum_se,
        token_nll=token_nll,
        accuracy=acc,
        accuracy_se=acc_se,
        skipped_ids=skipped,
        examples=results,
    )
