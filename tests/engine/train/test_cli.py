"""``iprox finetune`` -> ``iprox evaluate`` round trip, and ``iprox warmup``, on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.engine.train.conftest import QA
from worker.cli import main
from worker.engine.train import list_checkpoints


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main(argv) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_finetune_then_evaluate(
    tiny_dir: Path, tmp_path: Path, write_jsonl: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(QA)
    cache = str(tmp_path / "cache")
    run = tmp_path / "run"
    base = ["--cache-dir", cache, "--max-length", "64"]
    before = _run(capsys, ["evaluate", "--model", str(tiny_dir), "--task", str(data), *base])
    ft = _run(
        capsys,
        [
            "finetune",
            "--model",
            str(tiny_dir),
            "--data",
            str(data),
            "--out",
            str(run),
            *base,
            *["--epochs", "6", "--lr", "1e-2", "--batch-size", "3", "--save-steps", "2,4"],
        ],
    )
    assert ft["steps"] == 12 and ft["last_loss"] < ft["first_loss"]
    assert [c.step for c in list_checkpoints(run)] == [2, 4, 12]
    report_path = tmp_path / "eval.json"
    after = _run(
        capsys,
        ["evaluate", "--model", str(run), "--task", str(data), *base, "--out", str(report_path)],
    )
    assert before["n"] == after["n"] == len(QA)
    assert after["nll"] < before["nll"]
    assert after["accuracy"] is None and "examples" not in after
    assert len(json.loads(report_path.read_text())["examples"]) == len(QA)


def test_evaluate_sample_and_warmup(
    tiny_dir: Path, tmp_path: Path, write_jsonl: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(QA * 4)
    cache = str(tmp_path / "cache")
    ev = _run(
        capsys,
        [
            "evaluate",
            "--model",
            str(tiny_dir),
            "--task",
            str(data),
            "--cache-dir",
            cache,
            *["--sample", "5", "--seed", "1"],
        ],
    )
    assert ev["n"] == 5
    wu = _run(
        capsys,
        [
            "warmup",
            "--model",
            str(tiny_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "w"),
            "--cache-dir",
            cache,
            *["--fraction", "0.5", "--checkpoints", "2", "--epochs", "2"],
            *["--lora-rank", "2", "--batch-size", "4", "--max-length", "64"],
        ],
    )
    assert wu["steps"] == 6 and len(wu["checkpoints"]) == 2


def test_errors_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    assert main(["evaluate", "--model", "no-such-model", "--task", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "[data_format]" in err and "nope.jsonl" in err
    with pytest.raises(SystemExit):
        main(["finetune", "--model", "x", "--data", "d", "--out", "o", "--save-steps", "a,b"])
    assert "--save-steps" in capsys.readouterr().err
