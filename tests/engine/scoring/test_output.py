"""The one selection writer: JSONL, JSON and Parquet, streamed, whole or not at all."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from worker.engine.errors import ConfigError, DataFormatError
from worker.engine.scoring import output
from worker.engine.scoring.output import format_of, write_selection
from worker.engine.scoring.select import RankedRecord


def _ranked(fields: list[dict[str, object]]) -> list[RankedRecord]:
    return [
        RankedRecord(rank=k + 1, index=10 + k, id=str(k), score=1.0 / (k + 1), fields=f)
        for k, f in enumerate(fields)
    ]


FIELDS: list[dict[str, object]] = [
    {"text": "a", "meta": {"lang": "en"}},
    {"text": "b", "extra": 3},  # a field only some records have
    {"text": "c", "meta": None},
]


def _expected() -> list[dict[str, object]]:
    return [{**f, "rank": k + 1, "score": 1.0 / (k + 1)} for k, f in enumerate(FIELDS)]


def test_jsonl_and_json_hold_the_fields_plus_rank_and_score(tmp_path: Path) -> None:
    assert write_selection(tmp_path / "s.jsonl", _ranked(FIELDS), "jsonl") == 3
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == _expected()
    write_selection(tmp_path / "s.json", _ranked(FIELDS), "json")
    assert json.loads((tmp_path / "s.json").read_text()) == _expected()
    write_selection(tmp_path / "e.json", [], "json")
    assert json.loads((tmp_path / "e.json").read_text()) == []


def test_parquet_unifies_the_records_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "ROWS_PER_GROUP", 2)  # the schema spans row groups
    write_selection(tmp_path / "s.parquet", _ranked(FIELDS), "parquet")
    table = pq.read_table(tmp_path / "s.parquet")
    assert pq.ParquetFile(tmp_path / "s.parquet").metadata.num_row_groups == 2
    rows = table.to_pylist()
    want = [{"extra": None, "meta": None} | e for e in _expected()]
    assert rows == want
    assert str(table.schema.field("rank").type) == "int64"


def test_dates_and_bytes_of_columnar_pools_have_a_json_form(tmp_path: Path) -> None:
    fields: list[dict[str, object]] = [
        {"text": "a", "day": dt.date(2026, 1, 2), "raw": b"\x00\x01"}
    ]
    write_selection(tmp_path / "s.jsonl", _ranked(fields))
    row = json.loads((tmp_path / "s.jsonl").read_text())
    assert row["day"] == "2026-01-02" and row["raw"] == "AAE="


def test_a_record_with_its_own_rank_or_score_is_refused_and_nothing_written(
    tmp_path: Path,
) -> None:
    clash = _ranked([{"text": "a"}, {"text": "b", "score": 0.3}])
    for fmt in ("jsonl", "json", "parquet"):
        path = tmp_path / f"s.{fmt}"
        with pytest.raises(DataFormatError, match=r"record 11 \(id '1'\).*score"):
            write_selection(path, clash, fmt)  # type: ignore[arg-type]
        assert not path.exists() and not list(tmp_path.glob("*.tmp"))


def test_parquet_refuses_mixed_types_and_one_shot_iterators(tmp_path: Path) -> None:
    mixed = _ranked([{"text": "a", "n": 1}, {"text": "b", "n": "one"}])
    with pytest.raises(DataFormatError, match="no single Parquet type"):
        write_selection(tmp_path / "m.parquet", mixed, "parquet")
    assert not (tmp_path / "m.parquet").exists()
    with pytest.raises(ConfigError, match="re-iterable"):
        write_selection(tmp_path / "i.parquet", iter(_ranked(FIELDS)), "parquet")
    with pytest.raises(ConfigError, match="unknown selection format"):
        write_selection(tmp_path / "x.csv", _ranked(FIELDS), "csv")  # type: ignore[arg-type]


def test_the_file_name_picks_the_format() -> None:
    assert format_of(Path("a.parquet")) == "parquet"
    assert format_of(Path("a.JSON")) == "json"
    assert format_of(Path("a.jsonl")) == format_of(Path("a.out")) == "jsonl"
