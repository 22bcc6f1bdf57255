"""Selection: budgets, deterministic ties, quotas, outputs and bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.scoring.conftest import write
from worker.engine.errors import ConfigError, DataFormatError
from worker.engine.scoring import SelectionConfig, rank
from worker.engine.scoring.output import write_scores, write_selection


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    rows = [
        {"id": f"r{i}", "prompt": f"q{i}", "completion": f"a{i}", "src": "a" if i < 6 else "b"}
        for i in range(10)
    ]
    return write(tmp_path / "pool.jsonl", rows)


SCORES = {i: float(s) for i, s in enumerate([5, 9, 9, 1, 7, 3, 8, 2, 6, 4])}


def test_top_k_and_fraction_in_rank_order_with_index_tie_break(pool: Path) -> None:
    top = rank(pool, SCORES, SelectionConfig(top_k=4))
    assert [r.index for r in top] == [1, 2, 6, 4]  # 1 and 2 tie at 9: lower index first
    assert [r.rank for r in top] == [1, 2, 3, 4]
    assert top[0].id == "r1" and top[0].fields["completion"] == "a1" and top[0].score == 9.0
    frac = rank(pool, SCORES, SelectionConfig(fraction=0.25))  # ceil(2.5) = 3
    assert [r.index for r in frac] == [1, 2, 6]
    assert len(rank(pool, SCORES, SelectionConfig(top_k=50))) == 10


def test_token_budget_skips_what_does_not_fit(pool: Path) -> None:
    tokens = dict.fromkeys(range(10), 10) | {2: 25}
    sel = rank(pool, SCORES, SelectionConfig(token_budget=30), token_counts=tokens)
    assert [r.index for r in sel] == [1, 6, 4]  # 2 (25 tokens) no longer fits after 1
    with pytest.raises(ConfigError, match="token counts"):
        rank(pool, SCORES, SelectionConfig(token_budget=30))


def test_quota_caps_one_source(pool: Path) -> None:
    sel = rank(pool, SCORES, SelectionConfig(top_k=4, quota_field="src", quota=0.5))
    assert [r.index for r in sel] == [1, 2, 6, 8]  # source a capped at 2 of 4 places
    with pytest.raises(
        DataFormatError, match=r"pool.jsonl: record 1 \(id 'r1'\) has no field 'origin'"
    ):
        rank(pool, SCORES, SelectionConfig(top_k=4, quota_field="origin", quota=0.5))


def test_only_scored_records_compete_and_bad_scores_are_errors(pool: Path) -> None:
    assert [r.index for r in rank(pool, {3: 0.1, 7: 0.2}, SelectionConfig(top_k=5))] == [7, 3]
    with pytest.raises(ConfigError, match="not in the file"):
        rank(pool, {42: 1.0}, SelectionConfig(top_k=1))
    with pytest.raises(ConfigError, match="NaN"):
        rank(pool, {0: float("nan")}, SelectionConfig(top_k=1))
    with pytest.raises(ConfigError, match="no scores"):
        rank(pool, {}, SelectionConfig(top_k=1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"top_k": 1, "fraction": 0.5},
        {"top_k": 0},
        {"fraction": 1.5},
        {"top_k": 1, "quota": 0.5},
        {"top_k": 1, "quota_field": "src", "quota": 0.0},
    ],
)
def test_selection_config_rejects_bad_combinations(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError):
        SelectionConfig(**kwargs)


def test_outputs_keep_original_fields(pool: Path, tmp_path: Path) -> None:
    sel = rank(pool, SCORES, SelectionConfig(top_k=2))
    write_selection(tmp_path / "sel.jsonl", sel)
    lines = [json.loads(x) for x in (tmp_path / "sel.jsonl").read_text().splitlines()]
    assert lines[0] == {
        "id": "r1",
        "prompt": "q1",
        "completion": "a1",
        "src": "a",
        "rank": 1,
        "score": 9.0,
    }
    write_scores(tmp_path / "s.jsonl", SCORES, {i: f"r{i}" for i in SCORES})
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert rows[3] == {"index": 3, "id": "r3", "score": 1.0}
    clash = write(tmp_path / "clash.jsonl", [{"prompt": "q", "completion": "a", "score": 3}])
    with pytest.raises(DataFormatError, match="already has field"):
        write_selection(tmp_path / "x.jsonl", rank(clash, {0: 1.0}, SelectionConfig(top_k=1)))
