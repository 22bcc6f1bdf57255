"""Parquet, Arrow and ``save_to_disk`` data read through pyarrow, record by record."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.engine.data import iter_records, load_records
from worker.engine.errors import DataFormatError

ROWS = [
    {
        "id": "c1",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    },
    {
        "id": "c2",
        "messages": [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}],
    },
]
ALPACA = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(5)]


def table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """A table with every key of every row as a column (from_pylist takes the first row's)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys})


def _same_as_jsonl(tmp_path: Path, rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = [(r.index, r.id, r.prompt, r.response, dict(r.fields)) for r in load_records(ref)]
    got = [(r.index, r.id, r.prompt, r.response, dict(r.fields)) for r in load_records(path)]
    assert got == want


def test_parquet_chat_records_match_their_jsonl_twin(tmp_path: Path) -> None:
    path = tmp_path / "pool.parquet"
    pq.write_table(table(ROWS), path)
    _same_as_jsonl(tmp_path, ROWS, path)


def test_parquet_is_read_across_row_groups(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}"} for i in range(2500)]
    path = tmp_path / "big.parquet"
    pq.write_table(table(rows), path, row_group_size=300)
    recs = list(iter_records(path))
    assert [r.response for r in recs] == [r["text"] for r in rows]
    assert [r.index for r in recs] == list(range(2500))


@pytest.mark.parametrize("form", ["file", "stream"])
def test_arrow_ipc_in_both_forms(tmp_path: Path, form: str) -> None:
    data = table(ALPACA)
    path = tmp_path / "pool.arrow"
    with pa.OSFile(str(path), "wb") as sink:
        opener = pa.ipc.new_file if form == "file" else pa.ipc.new_stream
        with opener(sink, data.schema) as writer:
            writer.write_table(data, max_chunksize=2)
    _same_as_jsonl(tmp_path, ALPACA, path)


def test_a_datasets_save_to_disk_folder(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ALPACA).save_to_disk(str(folder), num_shards=3)
    assert len(list(folder.glob("*.arrow"))) > 1  # several shards, read in state.json order
    _same_as_jsonl(tmp_path, ALPACA, folder)


def test_a_datasetdict_folder_asks_for_a_split(tmp_path: Path) -> None:
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA)}).save_to_disk(str(folder))
    with pytest.raises(DataFormatError, match="give one split's folder"):
        list(iter_records(folder))
    assert len(load_records(folder / "train")) == 5


def test_a_folder_of_parquet_shards_is_one_pool(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(table(ALPACA[3:]), folder / "train-00001-of-00002.parquet")
    pq.write_table(table(ALPACA[:3]), folder / "train-00000-of-00002.parquet")
    _same_as_jsonl(tmp_path, ALPACA, folder)


def test_bad_columnar_data_names_the_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataFormatError, match=r"bad\.parquet: not a readable \.parquet file"):
        list(iter_records(path))
    odd = tmp_path / "odd.parquet"
    pq.write_table(table([{"body": "x"}]), odd)
    with pytest.raises(
        DataFormatError, match=r"odd\.parquet: row 0: unknown record format \(keys: body\)"
    ):
        list(iter_records(odd))


def test_a_parquet_pool_mixing_formats_reads_each_row_by_its_own_fields(tmp_path: Path) -> None:
    # Parquet gives every row every column (null where the record had none).
    rows = [ALPACA[0], {"id": "x", "prompt": "p", "completion": "c"}, {"text": "plain"}]
    path = tmp_path / "mixed.parquet"
    pq.write_table(table(rows), path)
    recs = load_records(path)
    assert [(r.prompt, r.response, r.plain) for r in recs] == [
        (({"role": "user", "content": "say 0"},), "0", False),
        (({"role": "user", "content": "p"},), "c", False),
        ((), "plain", True),
    ]
    assert [r.id for r in recs] == ["0", "x", "2"]  # a null id falls back to the index
