"""Fetching dataset URIs in the worker: local re-checks, http downloads with a size cap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.config import Settings
from tests.service.object_store import memory_object_stores
from tests.service.slow_http import BODY, trickling_server
from worker.tasks.inputs import InputError, local_input


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_http_download_is_cached_and_capped(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    (root / "pool.jsonl").write_text('{"text": "a"}\n' * 10)
    settings = Settings(home=tmp_path, http_max_bytes=1000, allowed_hosts=["127.0.0.1"])
    got = local_input(f"{base}/pool.jsonl", "dataset_uri", tmp_path / "job", settings)
    assert got.read_text() == '{"text": "a"}\n' * 10
    (root / "pool.jsonl").unlink()  # a redelivered task reuses the download
    assert local_input(f"{base}/pool.jsonl", "dataset_uri", tmp_path / "job", settings) == got
    (root / "big.jsonl").write_text("x" * 5000)
    with pytest.raises(InputError, match="limit of 1000"):
        local_input(f"{base}/big.jsonl", "dataset_uri", tmp_path / "job", settings)
    assert not list((tmp_path / "job" / "inputs").glob("*.part"))
    with pytest.raises(InputError, match="HTTP 404"):
        local_input(f"{base}/gone.jsonl", "dataset_uri", tmp_path / "job", settings)


def test_file_uri_is_rechecked_against_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "outside.jsonl").write_text('{"text": "x"}\n')
    (root / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    settings = Settings(home=tmp_path, data_roots=[root])
    with pytest.raises(InputError, match="outside the data roots"):
        local_input((root / "link.jsonl").as_uri(), "dataset_uri", tmp_path / "job", settings)


def test_http_download_has_a_total_deadline(tmp_path: Path) -> None:
    # Every byte comes well within the 5 s read timeout; only the 0.3 s deadline can stop it.
    settings = Settings(
        home=tmp_path, http_timeout_s=5, http_total_timeout_s=0.3, allowed_hosts=["127.0.0.1"]
    )
    job = tmp_path / "job"
    with trickling_server() as base:
        started = time.monotonic()
        with pytest.raises(InputError) as err:
            local_input(f"{base}/pool.jsonl", "target_uri", job, settings)
        assert time.monotonic() - started < 0.8
        message = err.value.message
        assert message.startswith("target_uri: ") and "limit of 0.3 s" in message
        assert "IPROX_HTTP_TOTAL_TIMEOUT_S" in message
        assert list((job / "inputs").iterdir()) == []  # no partial file, under any name
        # Given the time, the same trickle arrives whole: the deadline was what stopped it.
        settings.http_total_timeout_s = 10
        assert local_input(f"{base}/pool.jsonl", "target_uri", job, settings).read_bytes() == BODY


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_object_store_download_is_cached_and_capped(tmp_path: Path, scheme: str) -> None:
    settings = Settings(home=tmp_path, http_max_bytes=1000)
    job = tmp_path / "job"
    data = b'{"text": "a"}\n' * 10
    with memory_object_stores() as store:
        store.pipe(f"{scheme}://bucket/pool.jsonl", data)
        got = local_input(f"{scheme}://bucket/pool.jsonl", "dataset_uri", job, settings)
        assert got.read_bytes() == data
        store.rm(f"{scheme}://bucket/pool.jsonl")  # a redelivered task reuses the download
        assert local_input(f"{scheme}://bucket/pool.jsonl", "dataset_uri", job, settings) == got
        store.pipe(f"{scheme}://bucket/big.jsonl", b"x" * 5000)
        with pytest.raises(InputError, match=r"^dataset_uri: .*limit of 1000 bytes"):
            local_input(f"{scheme}://bucket/big.jsonl", "dataset_uri", job, settings)
        with pytest.raises(InputError, match=r"^target_uri: .*no such object"):
            local_input(f"{scheme}://bucket/gone.jsonl", "target_uri", job, settings)
    assert sorted(p.name for p in (job / "inputs").iterdir()) == [got.name]  # no partial files


def test_object_store_download_has_a_total_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.tasks import inputs

    settings = Settings(home=tmp_path, http_total_timeout_s=2.5)
    job = tmp_path / "job"
    clock = iter(range(1000))  # every look at the clock is one second later
    fake_time = SimpleNamespace(monotonic=lambda: float(next(clock)))
    monkeypatch.setattr(inputs, "time", fake_time)  # this module's clock only
    monkeypatch.setattr(inputs, "_CHUNK", 4)
    with memory_object_stores() as store:
        store.pipe("s3://bucket/slow.jsonl", b'{"text": "a"}\n' * 4)
        with pytest.raises(InputError, match=r"^dataset_uri: .*within the limit of 2\.5 s"):
            local_input("s3://bucket/slow.jsonl", "dataset_uri", job, settings)
        assert list((job / "inputs").iterdir()) == []  # no partial file
        settings.http_total_timeout_s = 1000
        got = local_input("s3://bucket/slow.jsonl", "dataset_uri", job, settings)
        assert got.read_bytes() == b'{"text": "a"}\n' * 4


def test_hf_dataset_files_download_as_columnar_files(tmp_path: Path) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from worker.engine.data import load_records

    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), buf)
    settings = Settings(home=tmp_path, http_max_bytes=1 << 20)
    uri = "hf://datasets/org/pool@main/data/train-00000-of-00001.parquet"
    with memory_object_stores() as store:
        store.pipe(uri, buf.getvalue())
        got = local_input(uri, "dataset_uri", tmp_path / "job", settings)
    assert got.suffix == ".parquet"
    assert [r.response for r in load_records(got)] == ["a", "b", "c"]
