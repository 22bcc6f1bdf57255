"""The API's checks of Parquet, Arrow, save_to_disk and hf:// dataset URIs (no database)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.datasets import check_uri
from service.errors import ValidationFailed
from service.outbound import OutboundPolicy
from tests.service.object_store import memory_object_stores

ALPACA = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(7)]


def table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """A table with every key of every row as a column (from_pylist takes the first row's)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys})


def _check(uri: str, roots: list[Path], field: str = "dataset_uri") -> int | None:
    return check_uri(
        uri,
        field,
        data_roots=roots,
        http_max_bytes=1 << 20,
        http_timeout_s=5,
        http_total_timeout_s=10,
        outbound=OutboundPolicy([]),
    )


def _parquet_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table(rows), buf)
    return buf.getvalue()


def test_local_columnar_data_is_counted_exactly(tmp_path: Path) -> None:
    pq.write_table(table(ALPACA), tmp_path / "p.parquet", row_group_size=2)
    data = table(ALPACA)
    with (
        pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, data.schema) as w,
    ):
        w.write_table(data, max_chunksize=3)
    datasets.Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    (tmp_path / "shards").mkdir()
    pq.write_table(table(ALPACA[:4]), tmp_path / "shards" / "a.parquet")
    pq.write_table(table(ALPACA[4:]), tmp_path / "shards" / "b.parquet")
    for name in ("p.parquet", "s.arrow", "saved", "shards"):
        assert _check((tmp_path / name).as_uri(), [tmp_path]) == 7, name


def test_columnar_data_in_no_known_format_is_a_422_naming_the_field(tmp_path: Path) -> None:
    pq.write_table(table([{"body": "x"}]), tmp_path / "odd.parquet")
    with pytest.raises(ValidationFailed, match=r"unknown record format \(keys: body\)") as err:
        _check((tmp_path / "odd.parquet").as_uri(), [tmp_path], field="target_uri")
    assert err.value.field == "target_uri"
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValidationFailed, match=r"not a readable \.parquet file"):
        _check((tmp_path / "junk.parquet").as_uri(), [tmp_path])
    pq.write_table(table(ALPACA).slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(ValidationFailed, match="holds no records"):
        _check((tmp_path / "empty.parquet").as_uri(), [tmp_path])


def test_a_datasetdict_folder_is_refused_with_the_split_to_give(tmp_path: Path) -> None:
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA)})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValidationFailed, match="give one split's folder"):
        _check((tmp_path / "dd").as_uri(), [tmp_path])
    assert _check((tmp_path / "dd" / "train").as_uri(), [tmp_path]) == 7


def test_hf_uris_go_to_the_hub_file_system() -> None:
    # The real class behind hf:// (huggingface_hub's), without touching the network.
    assert fsspec.get_filesystem_class("hf").__module__.startswith("huggingface_hub")


def test_hf_dataset_files_are_checked_through_fsspec() -> None:
    with memory_object_stores() as store:
        store.pipe("hf://datasets/org/pool@v1/data/train.parquet", _parquet_bytes(ALPACA))
        assert _check("hf://datasets/org/pool@v1/data/train.parquet", []) == 7
        with pytest.raises(ValidationFailed, match="no such object"):
            _check("hf://datasets/org/pool/data/missing.parquet", [])
        store.pipe("hf://datasets/org/pool/odd.parquet", _parquet_bytes([{"body": "x"}]))
        with pytest.raises(ValidationFailed, match="unknown record format"):
            _check("hf://datasets/org/pool/odd.parquet", [])


@pytest.mark.parametrize(
    "uri",
    [
        "hf://models/org/model/config.json",
        "hf://datasets/org/data.parquet",
        "hf://datasets/org/pool",
        "hf://spaces/org/app/file.jsonl",
    ],
)
def test_hf_uris_that_name_no_dataset_file_are_refused(uri: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        _check(uri, [])
    assert err.value.field == "dataset_uri"
    assert "hf://datasets/ORG/NAME" in err.value.detail or "unknown file type" in err.value.detail
