"""Evaluation: NLL against a hand computation, and multiple-choice scoring."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.train.conftest import qa_records
from worker.engine.data import encode, load_records, record_from_obj
from worker.engine.models import LoadedModel
from worker.engine.train import FinetuneConfig, evaluate, finetune, option_logprobs
from worker.engine.train.choice import (
    choices_of,
    first_response_position,
    letter_tokens,
    option_examples,
)


def _hand_nll(model: torch.nn.Module, input_ids: list[int], labels: list[int]) -> float:
    """Sum over loss tokens of -log p(token | prefix), one unpadded forward per token."""
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(input_ids)):
            if labels[t] == -100:
                continue
            logits = model(input_ids=torch.tensor([input_ids[:t]])).logits[0, -1]
            total -= float(torch.log_softmax(logits.double(), dim=-1)[input_ids[t]])
    return total


def test_nll_matches_a_hand_computation(tiny: LoadedModel) -> None:
    records = qa_records()[:3]
    report = evaluate(tiny.model, tiny.tokenizer, records, max_length=64, batch_size=2)
    assert report.n == 3 and report.accuracy is None
    per_token = []
    for rec, res in zip(records, report.examples, strict=True):
        ex = encode(rec, tiny.tokenizer, 64)
        expected = _hand_nll(tiny.model, ex.input_ids, ex.labels)
        assert res.id == rec.id
        assert res.n_tokens == ex.n_loss_tokens
        assert res.nll_sum == pytest.approx(expected, rel=1e-4)
        per_token.append(expected / ex.n_loss_tokens)
    mean = sum(per_token) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in per_token) / 2 / 3)
    assert report.nll == pytest.approx(mean, rel=1e-4)
    assert report.nll_se == pytest.approx(se, rel=1e-3)
    summary = report.to_dict(with_examples=False)
    assert "examples" not in summary and summary["n"] == 3


def test_records_without_response_tokens_are_skipped_and_named(tiny: LoadedModel) -> None:
    records = [*qa_records()[:2], record_from_obj({"prompt": "x", "completion": ""}, 2, "r2")]
    report = evaluate(tiny.model, tiny.tokenizer, records, max_length=64)
    assert report.n == 2 and report.skipped_ids == ["2"]


def _mmlu_csv(path: Path) -> Path:
    rows = [
        ["Which planet is red?", "Venus", "Mars", "Earth", "Jupiter", "B"],
        ["Which is a prime?", "4", "6", "8", "7", "D"],
        ["Water freezes at?", "0 C", "50 C", "80 C", "100 C", "A"],
        ["Largest ocean?", "Arctic", "Indian", "Pacific", "Atlantic", "C"],
    ]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_option_scores_match_one_forward_per_option(tiny: LoadedModel, tmp_path: Path) -> None:
    rec = load_records(_mmlu_csv(tmp_path / "quiz_test.csv"))[0]
    choices = list(rec.fields["choices"])
    batched = option_logprobs(tiny.model, tiny.tokenizer, rec, choices, 128)
    for letter, text, score in zip("ABCD", choices, batched, strict=True):
        option = dataclasses.replace(rec, response=f"{letter}. {text}")
        ex = encode(option, tiny.tokenizer, 128)
        assert score == pytest.approx(-_hand_nll(tiny.model, ex.input_ids, ex.labels), rel=1e-4)


def test_letter_scores_are_first_token_logprobs(tiny: LoadedModel, tmp_path: Path) -> None:
    rec = load_records(_mmlu_csv(tmp_path / "quiz_test.csv"))[1]
    choices, _ = choices_of(rec) or ([], "")
    options = option_examples(rec, choices, tiny.tokenizer, 128)
    tokens = letter_tokens(options)
    assert tokens is not None and tiny.tokenizer.decode(tokens) == "ABCD"
    start = first_response_position(options[0])
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([options[0].input_ids[:start]])).logits[0, -1]
    hand = torch.log_softmax(logits.double(), dim=-1)[tokens]
    report = evaluate(tiny.model, tiny.tokenizer, [rec], max_length=128)
    assert report.examples[0].predicted == "ABCD"[int(hand.argmax())]
    # Options that do not start with distinct tokens cannot be told apart by their first token.
    same = [dataclasses.replace(o, input_ids=[*o.input_ids[:start], 5, 6]) for o in options]
    assert letter_tokens(same) is None


@pytest.mark.parametrize("scoring", ["letter", "option"])
def test_mmlu_scoring_picks_the_planted_answers(
    tiny: LoadedModel, tmp_path: Path, scoring: Any
) -> None:
    """After learning the reference answers, the model must pick them among the four options."""
    records = load_records(_mmlu_csv(tmp_path / "quiz_test.csv"))
    before = evaluate(tiny.model, tiny.tokenizer, records, max_length=128, choice_scoring=scoring)
    assert before.accuracy is not None and before.accuracy < 1.0  # not right by chance
    config = FinetuneConfig(epochs=60, lr=1e-2, batch_size=4, max_length=128, warmup_ratio=0.0)
    tuned = finetune(tiny, records, config, tmp_path / "run").model
    after = evaluate(tuned, tiny.tokenizer, records, max_length=128, choice_scoring=scoring)
    assert after.accuracy == 1.0 and after.accuracy_se == 0.0
    assert [e.predicted for e in after.examples] == ["B", "D", "A", "C"]
    assert all(e.correct for e in after.examples)
    assert after.nll < before.nll
