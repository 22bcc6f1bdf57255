"""``iprox score`` and ``iprox select`` end to end on a tiny local model directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.scoring.conftest import pool_rows, target_rows, write
from tests.tiny import save_tiny_model
from worker.cli import main


def _lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    targets = target_rows(2)
    return {
        "model": save_tiny_model(tmp_path / "model", "llama"),
        "train": write(tmp_path / "pool.jsonl", [*pool_rows(8), *targets]),
        "target": write(tmp_path / "target.jsonl", targets),
    }


def test_score_writes_every_sample_and_reuses_the_store(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    common = ["--model", str(files["model"]), "--train", str(files["train"])]
    common += ["--target", str(files["target"]), "--proj-dim", "256", "--max-length", "64"]
    common += ["--features", "projected", "--store", str(tmp_path / "store")]
    assert main(["score", *common, "--out", str(tmp_path / "s.jsonl")]) == 0
    first = json.loads(capsys.readouterr().out)
    rows = _lines(tmp_path / "s.jsonl")
    assert [r["index"] for r in rows] == list(range(10))
    assert rows[0]["id"] == "p0" and first["gradients"]["train_computed"] == 10
    assert main(["score", *common, "--out", str(tmp_path / "s2.jsonl")]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["gradients"]["train_computed"] == 0
    assert second["gradients"]["train_loaded"] == 10
    # the default, exact scores, keep no features: a store is a clear error (exit 2)
    exact = [a for a in common if a != "projected" and a != "--features"]
    assert main(["score", *exact, "--out", str(tmp_path / "s3.jsonl")]) == 2
    assert "gradient store keeps projected features" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["none", "svd"])
def test_select_writes_ranked_records_with_original_fields(files, tmp_path, capsys, method) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "sel.jsonl"
    argv = ["select", "--model", str(files["model"]), "--train", str(files["train"])]
    argv += ["--target", str(files["target"]), "--out", str(out), "--top-k", "3"]
    argv += ["--proj-dim", "256", "--max-length", "64", "--method", method]
    argv += ["--sparsity", "0.5", "--align-steps", "0"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    selected = _lines(out)
    assert [r["rank"] for r in selected] == [1, 2, 3]
    assert selected[0]["score"] >= selected[1]["score"] >= selected[2]["score"]
    pool = _lines(files["train"])
    for r in selected:
        original = {k: v for k, v in r.items() if k not in ("rank", "score")}
        assert original in pool
    assert len(_lines(tmp_path / "sel.scores.jsonl")) == 10
    assert summary["samples"] == 10 and summary["selected"] == 3
    assert set(summary["timings_s"]) >= {"loading", "scoring", "ranking"}
    if method == "svd":
        assert summary["proxy"]["proxy_params"] < summary["proxy"]["target_params"]
        fidelity = summary["proxy"]["fidelity"]  # scored against the --target file
        assert fidelity["targets"]["source"] == "job" and fidelity["targets"]["records"] == 2
        assert main([*argv, "--fidelity-samples", "0"]) == 0
        assert json.loads(capsys.readouterr().out)["proxy"]["fidelity"] is None
    else:
        assert summary["proxy"] is None
        assert {r["question"] for r in selected if "question" in r} == {
            t["question"] for t in target_rows(2)
        }


def test_cli_reports_bad_input_with_the_file(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    argv = ["score", "--model", str(files["model"]), "--train", str(files["train"])]
    argv += ["--target", str(empty), "--out", str(tmp_path / "s.jsonl"), "--proj-dim", "256"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "empty_dataset" in err and "empty.jsonl" in err
