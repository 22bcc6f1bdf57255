"""The facade the CLI and the Celery tasks call, on a tiny local model directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.scoring.conftest import pool_rows, target_rows, write
from tests.tiny import save_tiny_model
from worker.engine.pipeline import (
    ScoreConfig,
    ScoreStats,
    SelectionConfig,
    build_proxy_from_files,
    iter_scores,
    rank,
    run_selection,
)
from worker.engine.proxy import ProxyConfig


def _collect(batches) -> dict[int, float]:  # type: ignore[no-untyped-def]
    out: dict[int, float] = {}
    for b in batches:
        out.update(zip(b.indices, b.scores, strict=True))
    return out


def test_saved_proxy_built_proxy_and_full_model_paths(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "model", "qwen2")
    train = write(tmp_path / "pool.jsonl", pool_rows(8))
    target = write(tmp_path / "t.jsonl", target_rows(2))
    pcfg = ProxyConfig(method="svd", sparsity=0.5, align_steps=0, max_length=64)
    manifest = build_proxy_from_files(str(model), train, tmp_path / "proxy", pcfg)
    assert manifest["proxy_params"] < manifest["target_params"]
    cfg = ScoreConfig(features="projected", proj_dim=256, max_length=64)
    stats = ScoreStats()
    saved = _collect(
        iter_scores(
            str(model),
            train,
            [target],
            proxy=tmp_path / "proxy",
            config=cfg,
            store_dir=tmp_path / "store",
            stats=stats,
        )
    )
    assert sorted(saved) == list(range(8)) and stats.train_computed == 8
    built = _collect(iter_scores(str(model), train, [target], proxy=pcfg, config=cfg))
    assert built == pytest.approx(saved, rel=1e-4, abs=1e-5)
    full = _collect(iter_scores(str(model), train, [target], proxy=None, config=cfg))
    assert full != pytest.approx(saved, rel=1e-3)
    # the same saved proxy again: every training gradient comes from the store
    again = ScoreStats()
    _collect(
        iter_scores(
            str(model),
            train,
            [target],
            proxy=tmp_path / "proxy",
            config=cfg,
            store_dir=tmp_path / "store",
            stats=again,
        )
    )
    assert (again.train_computed, again.train_loaded) == (0, 8)
    top = rank(train, full, SelectionConfig(top_k=3))
    assert [r.rank for r in top] == [1, 2, 3]


def test_proxy_builds_report_fidelity_against_the_target_files(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "model", "llama")
    train = write(tmp_path / "pool.jsonl", pool_rows(16))
    target = write(tmp_path / "t.jsonl", target_rows(3))
    pcfg = ProxyConfig(
        method="svd", align_steps=0, max_length=64, fidelity_samples=6, fidelity_targets=2
    )
    report = build_proxy_from_files(
        str(model), train, tmp_path / "proxy", pcfg, targets=[target, target]
    )["fidelity"]
    # Two files, one target set of their 6 records, sampled down to 2.
    t = report["targets"]
    assert (t["source"], t["available"], t["records"]) == ("job", 6, 2)
    assert report["calibration"]["records"] == 6 and report["status"] == "measured"
    result = run_selection(
        str(model),
        train,
        [target],
        proxy=pcfg,
        config=ScoreConfig(max_length=64),
        selection=SelectionConfig(top_k=2),
    )
    fidelity = result.summary["proxy"]["fidelity"]
    assert fidelity["targets"]["source"] == "job" and fidelity["targets"]["available"] == 3
    assert "record_ids" not in fidelity["calibration"] and fidelity["status"] == "measured"
