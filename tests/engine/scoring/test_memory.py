"""A batch that runs out of device memory is halved and retried; a single sample that does not
fit fails with ``out_of_memory``. Simulated on the CPU by raising torch's out-of-memory error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.scoring.conftest import pool_rows, target_rows, write
from tests.tiny import tiny_model
from worker.engine.errors import OutOfMemoryError
from worker.engine.scoring.config import ScoreConfig
from worker.engine.scoring.exact import ExactScorer
from worker.engine.scoring.features import _OOM
from worker.engine.scoring.gradients import GradientFeaturizer
from worker.engine.scoring.run import task_score_stream

OOM = _OOM[0]


def _files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write(tmp_path / "pool.jsonl", pool_rows(9)),
        "t": write(tmp_path / "t.jsonl", target_rows(5)),
    }


def _run(files: dict[str, Path], cfg: ScoreConfig, events: list[Any]) -> torch.Tensor:
    model, tok = tiny_model("llama", seed=1)
    out: dict[int, torch.Tensor] = {}
    for b in task_score_stream(
        model,
        tok,
        "m",
        files["train"],
        [files["t"]],
        cfg,
        events=lambda m, d: events.append((m, d)),
    ):
        out.update(zip(b.indices, b.scores, strict=True))
    return torch.stack([out[i] for i in sorted(out)])


def _limit(monkeypatch: pytest.MonkeyPatch, cls: Any, method: str, largest: int) -> None:
    """``cls.method`` raises torch's out-of-memory error on batches above ``largest`` rows."""
    real = getattr(cls, method)

    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        batch = next(a for a in args if isinstance(a, dict))
        if int(batch["attention_mask"].shape[0]) > largest:
            raise OOM("simulated: CUDA out of memory")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, guarded)


@pytest.mark.parametrize("features", ["exact", "projected"])
def test_batches_halve_until_they_fit_and_scores_do_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, features: Any
) -> None:
    files = _files(tmp_path)
    cfg = ScoreConfig(features=features, proj_dim=256, max_length=64, batch_size=8)
    expected = _run(files, cfg, [])
    events: list[Any] = []
    if features == "exact":
        _limit(monkeypatch, ExactScorer, "__call__", 2)  # the pool's batches
        _limit(monkeypatch, ExactScorer, "accumulate", 2)  # the target task's vector
    else:
        _limit(monkeypatch, GradientFeaturizer, "__call__", 2)
    got = _run(files, cfg, events)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    halvings = [d for m, d in events if m == "batch halved: out of memory"]
    assert {"from": 8, "to": 4} in halvings and {"from": 4, "to": 2} in halvings
    assert all(d["to"] >= 2 for d in halvings)  # never below what fits


def test_a_single_sample_that_does_not_fit_is_an_out_of_memory_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)
    _limit(monkeypatch, ExactScorer, "accumulate", 0)
    with pytest.raises(OutOfMemoryError, match="a batch of one sample does not fit") as info:
        _run(files, ScoreConfig(max_length=64, batch_size=4), [])
    assert info.value.code == "out_of_memory"
