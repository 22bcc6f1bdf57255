"""``sequence_nll`` against a per-token loop, and the standard error against ``statistics``."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from worker.engine.math.nll import mean_and_se, response_loss, sequence_nll, token_mean_loss


def test_sequence_nll_matches_a_per_token_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=gen)
    labels = torch.randint(0, 11, (3, 6), generator=gen)
    labels[0, :3] = -100  # prompt
    labels[1, 4:] = -100  # padding
    labels[2, :] = -100
    labels[2, 5] = 7
    sums, counts = sequence_nll(logits, labels)
    for b in range(3):
        expected, n = 0.0, 0
        for t in range(1, 6):
            if labels[b, t] != -100:
                logp = torch.log_softmax(logits[b, t - 1].double(), dim=-1)
                expected -= float(logp[labels[b, t]])
                n += 1
        assert sums[b].item() == pytest.approx(expected, rel=1e-5)
        assert counts[b].item() == n
    mean = token_mean_loss(logits, labels)
    assert mean.item() == pytest.approx(sums.sum().item() / counts.sum().item(), rel=1e-6)


def test_token_mean_loss_refuses_a_batch_without_loss_tokens() -> None:
    with pytest.raises(ValueError, match="no loss-bearing token"):
        token_mean_loss(torch.zeros(1, 3, 5), torch.full((1, 3), -100))


def test_mean_and_se() -> None:
    xs = [1.0, 2.5, 4.0, 4.5]
    mean, se = mean_and_se(xs)
    assert mean == pytest.approx(statistics.fmean(xs))
    assert se == pytest.approx(statistics.stdev(xs) / math.sqrt(len(xs)))
    assert mean_and_se([3.0]) == (3.0, 0.0)
    with pytest.raises(ValueError):
        mean_and_se([])


def test_response_loss_is_each_rows_mean_and_names_an_empty_row() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    labels[0, :2] = -100
    for b, loss in enumerate(response_loss(logits, labels)):
        rows = [t for t in range(1, 5) if labels[b, t] != -100]
        logp = torch.log_softmax(logits[b].double(), dim=-1)
        expected = -sum(float(logp[t - 1, labels[b, t]]) for t in rows) / len(rows)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
    labels[1, 1:] = -100
    with pytest.raises(ValueError, match="batch row 1: no response token"):
        response_loss(logits, labels)
