"""Evaluation: per-example NLL of the reference answer, and multiple-choice accuracy.

The main metric is the mean over examples of the per-token NLL of the reference response
(prompt tokens carry no loss): continuous, and sensitive to small changes at the scale this
project runs at. Multiple-choice accuracy (MMLU) is computed where records carry ``choices`` and
an ``answer`` letter, by comparing the likelihoods of the four options
(:mod:`worker.engine.train.choice`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from worker.engine.data import Example, Record, encode, pad_token_id
from worker.engine.errors import EmptyDatasetError, NoResponseTokensError
from worker.engine.math.nll import mean_and_se
from worker.engine.progress import ProgressFn, StopFn, check_stop, report
from worker.engine.train.choice import (
    ChoiceScoring,
    choices_of,
    first_response_position,
    letter_scores,
    letter_tokens,
    option_examples,
    option_logprobs,
    pick,
)
from worker.engine.train.forward import Scored, score_examples

STAGE = "evaluating"


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


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    max_length: int = 512,
    batch_size: int = 8,
    accuracy: Literal["auto", "never"] = "auto",
    choice_scoring: ChoiceScoring = "letter",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> EvalReport:
    """NLL of every record's reference response; accuracy where every record is multiple choice.

    Records whose response has no token left are skipped and listed. ``accuracy="auto"``
    measures accuracy when every record carries ``choices`` and ``answer`` (MMLU), scored as
    ``choice_scoring`` says (see :mod:`worker.engine.train.choice`); a record whose options do
    not tokenise to distinct first tokens falls back to whole-option scoring.
    """
    was_training = model.training
    model.eval()
    try:
        return _evaluate(
            model,
            tokenizer,
            records,
            max_length,
            batch_size,
            accuracy,
            choice_scoring,
            progress,
            should_stop,
        )
    finally:
        model.train(was_training)


def _evaluate(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    max_length: int,
    batch_size: int,
    accuracy: str,
    choice_scoring: ChoiceScoring,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> EvalReport:
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
    mc = [choices_of(r) for r in kept] if accuracy == "auto" else []
    measure = bool(mc) and all(c is not None for c in mc)
    letters = measure and choice_scoring == "letter"
    pad = pad_token_id(tokenizer)
    scored: list[Scored] = []
    for start in range(0, len(examples), batch_size):
        check_stop(should_stop, STAGE)
        chunk = examples[start : start + batch_size]
        scored.extend(score_examples(model, chunk, pad, batch_size, first_logprobs=letters))
        report(progress, STAGE, len(scored), len(examples))
    results = []
    for i, (r, e, sc) in enumerate(zip(kept, examples, scored, strict=True)):
        predicted, correct = None, None
        if measure:
            choices, answer = mc[i]  # type: ignore[misc]
            predicted = _predict(model, tokenizer, r, e, sc, choices, max_length, letters)
            correct = predicted == answer
        results.append(
            ExampleResult(r.index, r.id, sc.nll_sum, sc.n_tokens, e.truncated, predicted, correct)
        )
    return _aggregate(results, skipped)


def _predict(
    model: nn.Module,
    tokenizer: Any,
    record: Record,
    reference: Example,
    scored: Scored,
    choices: list[str],
    max_length: int,
    letters: bool,
) -> str:
    if letters and scored.first_logprobs is not None:
        options = option_examples(record, choices, tokenizer, max_length)
        tokens = letter_tokens(options)
        start = first_response_position(reference)
        # The reference shares the options' prefix only if it tokenised the same way.
        if tokens is not None and reference.input_ids[:start] == options[0].input_ids[:start]:
            return pick(letter_scores(scored.first_logprobs, tokens))
    return pick(option_logprobs(model, tokenizer, record, choices, max_length))


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
