"""Dataset URI checks the API runs before queueing (no database needed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.datasets import check_uri, resolve_file_uri
from service.errors import ValidationFailed
from service.outbound import OutboundPolicy
from service.targets import resolve_target_model
from tests.service.object_store import memory_object_stores
from tests.service.slow_http import trickling_server


def _check(
    uri: str,
    roots: list[Path],
    max_bytes: int = 10_000,
    total_s: float = 10,
    field: str = "dataset_uri",
) -> None:
    check_uri(
        uri,
        field,
        data_roots=roots,
        http_max_bytes=max_bytes,
        http_timeout_s=5,
        http_total_timeout_s=total_s,
        outbound=OutboundPolicy(["127.0.0.1"]),  # the local test servers
    )


@pytest.fixture
def www(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_local_formats_are_sniffed(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
    (tmp_path / "b.json").write_text(
        '{"tydiqa": [{"context": "c", "question": "q", "answers": []}]}'
    )
    (tmp_path / "c.csv").write_text("What?,a,b,c,d,A\n")
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "x_dev.csv").write_text("What?,a,b,c,d,B\n")
    for name in ("a.jsonl", "b.json", "c.csv", "mmlu"):
        _check((tmp_path / name).as_uri(), [tmp_path])
    bad = {
        "d.jsonl": "",
        "e.json": "[]",
        "f.csv": "only,three,columns\n",
        "g.txt": "text",
        "h.jsonl": '["a list"]\n',
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValidationFailed) as err:
            _check((tmp_path / name).as_uri(), [tmp_path])
        assert err.value.field == "dataset_uri" and name in err.value.detail


def test_file_uris_stay_inside_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "secret.jsonl").write_text('{"text": "x"}\n')
    assert resolve_file_uri((root / "sub" / "ok.jsonl").as_uri(), [root], "f").name == "ok.jsonl"
    for uri in (
        f"file://{root}/sub/../../secret.jsonl",
        f"file://{root}/%2E%2E/secret.jsonl",
        f"file://{tmp_path}/secret.jsonl",
        "file://otherhost/etc/passwd",
        "file:relative.jsonl",
    ):
        with pytest.raises(ValidationFailed):
            resolve_file_uri(uri, [root], "f")
    with pytest.raises(ValidationFailed, match="no data root"):
        resolve_file_uri((root / "sub" / "ok.jsonl").as_uri(), [], "f")


def test_http_is_checked_with_head(www: tuple[str, Path]) -> None:
    base, root = www
    (root / "pool.jsonl").write_text('{"text": "a"}\n' * 100)
    _check(f"{base}/pool.jsonl", [])
    with pytest.raises(ValidationFailed, match="over the limit"):
        _check(f"{base}/pool.jsonl", [], max_bytes=100)
    with pytest.raises(ValidationFailed, match="HTTP 404"):
        _check(f"{base}/missing.jsonl", [])
    with pytest.raises(ValidationFailed, match="unreachable"):
        _check("http://127.0.0.1:9/pool.jsonl", [])
    with pytest.raises(ValidationFailed, match="unknown file type"):
        _check(f"{base}/pool.xlsx", [])


def test_http_check_has_a_total_deadline() -> None:
    # The server trickles its headers, each byte well within the 5 s read timeout.
    with trickling_server() as base:
        started = time.monotonic()
        with pytest.raises(ValidationFailed) as err:
            _check(f"{base}/pool.jsonl", [], total_s=0.3, field="target_uri")
        assert time.monotonic() - started < 0.8
    assert err.value.field == "target_uri"
    assert "limit of 0.3 s" in err.value.detail and "IPROX_HTTP_TOTAL_TIMEOUT_S" in err.value.detail


def test_object_stores_need_their_fsspec_backend() -> None:
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ValidationFailed, match="fsspec back end"):
            _check("s3://bucket/pool.jsonl", [])
    else:  # with the extra installed the bucket is unreachable from here
        with pytest.raises(ValidationFailed):
            _check("s3://bucket/pool.jsonl", [])


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_object_store_uris_are_checked_through_fsspec(scheme: str) -> None:
    with memory_object_stores() as store:
        pool = f"{scheme}://bucket/data/pool.jsonl"
        store.pipe(pool, b'{"text": "a"}\n' * 100)  # 1,400 bytes
        _check(pool, [])
        with pytest.raises(ValidationFailed, match="1400 bytes, over the limit of 1000") as err:
            _check(pool, [], max_bytes=1000)
        assert err.value.field == "dataset_uri"
        with pytest.raises(ValidationFailed, match="no such object") as err:
            _check(f"{scheme}://bucket/data/missing.jsonl", [], field="target_uri")
        assert err.value.field == "target_uri"
        store.pipe(f"{scheme}://bucket/folder.jsonl/part-0.jsonl", b'{"text": "a"}\n')
        with pytest.raises(ValidationFailed, match="is not a file"):
            _check(f"{scheme}://bucket/folder.jsonl", [])
        store.pipe(f"{scheme}://bucket/lists.jsonl", b'["not a record"]\n')
        with pytest.raises(ValidationFailed, match="must be a JSON object"):
            _check(f"{scheme}://bucket/lists.jsonl", [])


def test_target_model_check(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "nocfg").mkdir()

    def resolve(ref: str) -> str:
        return resolve_target_model(ref, presets=["smollm2-135m-instruct"], model_roots=[tmp_path])

    assert resolve("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert resolve("m") == str(tmp_path / "m")
    assert resolve(str(tmp_path / "m")) == str(tmp_path / "m")
    for ref in ("nocfg", "../m", "/etc", "gpt-5"):
        with pytest.raises(ValidationFailed) as err:
            resolve(ref)
        assert err.value.field == "target_model"
