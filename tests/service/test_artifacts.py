"""The artifact root as a folder (in place, as always) or an fsspec URL (work locally, upload),
and the start-up error when a URL's fsspec back end is missing (no database needed)."""

from __future__ import annotations

import importlib
import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from fastapi.testclient import TestClient
from fsspec.implementations.memory import MemoryFileSystem
from pydantic import ValidationError

from service.artifacts import download_dir, open_binary
from service.config import Settings
from tests.service.kit import service_environ


@pytest.fixture
def missing_backend() -> Iterator[str]:
    """A protocol fsspec knows but whose package is not installed: a missing extra."""
    fsspec.register_implementation(
        "iproxgone", "iprox_no_such_package.FS", errtxt="Install iprox-no-such-package"
    )
    yield "iproxgone"
    importlib.import_module("fsspec.registry").known_implementations.pop("iproxgone", None)


@pytest.fixture(params=["memory", "file"])
def url_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "file":
        yield (tmp_path / "kept").as_uri()
        return
    root = f"memory://iprox-{uuid.uuid4().hex[:8]}/artifacts"
    yield root
    MemoryFileSystem().rm(root.removeprefix("memory://"), recursive=True)


def test_a_folder_root_is_written_in_place(tmp_path: Path) -> None:
    # Explicit None: the session-wide integration stack may have set IPROX_ARTIFACT_ROOT.
    artifacts = Settings(home=tmp_path, artifact_root=None).artifacts
    assert artifacts.root == str(tmp_path / "artifacts") and not artifacts.remote
    assert artifacts.workspace("jobs", "j1") == tmp_path / "artifacts" / "jobs" / "j1"
    assert artifacts.location("jobs", "j1") == str(artifacts.workspace("jobs", "j1"))
    assert artifacts.publish("jobs", "j1", "subset.jsonl").endswith("/jobs/j1/subset.jsonl")
    assert not (tmp_path / "artifacts").exists()  # publishing copies nothing in place
    other = Settings(home=tmp_path, artifact_root=tmp_path / "elsewhere").artifacts
    assert other.work == tmp_path / "elsewhere" and other.root == str(tmp_path / "elsewhere")


def test_a_url_root_receives_what_the_worker_made(tmp_path: Path, url_root: str) -> None:
    artifacts = Settings(home=tmp_path, artifact_root=url_root, work_dir=tmp_path / "w").artifacts
    assert artifacts.remote and artifacts.work == tmp_path / "w"
    proxy = artifacts.workspace("proxies", "p1")
    (proxy / "sub").mkdir(parents=True)
    (proxy / "proxy.json").write_text('{"method": "ipsvd"}')
    (proxy / "sub" / "factors.bin").write_bytes(b"\x00\x01" * 100)
    subset = artifacts.workspace("jobs", "j1", "subset.jsonl")
    subset.parent.mkdir(parents=True)
    subset.write_text('{"rank": 1}\n{"rank": 2}\n')

    assert artifacts.publish("proxies", "p1") == f"{url_root}/proxies/p1"
    location = artifacts.publish("jobs", "j1", "subset.jsonl")
    assert location == f"{url_root}/jobs/j1/subset.jsonl"
    subset.unlink()  # the API reads the uploaded copy, not the worker's
    with open_binary(location) as fh:
        assert list(fh) == [b'{"rank": 1}\n', b'{"rank": 2}\n']
    with pytest.raises(FileNotFoundError):
        open_binary(f"{url_root}/jobs/j2/subset.jsonl")

    cache = tmp_path / "cache" / "p1"
    download_dir(f"{url_root}/proxies/p1", cache)
    assert (cache / "proxy.json").read_text() == '{"method": "ipsvd"}'
    assert (cache / "sub" / "factors.bin").read_bytes() == b"\x00\x01" * 100
    assert [p.name for p in cache.parent.iterdir()] == ["p1"]  # no temporary folder left
    download_dir(f"{url_root}/proxies/p1", cache)  # a second copy finds the first in place
    with pytest.raises(FileNotFoundError):
        download_dir(f"{url_root}/proxies/p2", tmp_path / "cache" / "p2")
    assert not (tmp_path / "cache" / "p2").exists()


def test_a_url_without_its_fsspec_backend_is_a_config_error(
    tmp_path: Path, missing_backend: str
) -> None:
    with pytest.raises(ValidationError, match=r"IPROX_ARTIFACT_ROOT=.*Install iprox-no-such"):
        Settings(home=tmp_path, artifact_root=f"{missing_backend}://bucket/artifacts")
    if importlib.util.find_spec("gcsfs") is None:  # the gs extra, as installed by default
        with pytest.raises(ValidationError, match=r"pip install 'iprox-service\[gs\]'"):
            Settings(home=tmp_path, artifact_root="gs://bucket/artifacts")
    with pytest.raises(ValidationError, match="Protocol not known"):
        Settings(home=tmp_path, artifact_root="nosuchfs://bucket/artifacts")


def test_the_api_refuses_to_start_without_the_backend(tmp_path: Path, missing_backend: str) -> None:
    from service.main import create_app

    env = {"IPROX_HOME": str(tmp_path), "IPROX_ARTIFACT_ROOT": f"{missing_backend}://b/a"}
    with (
        service_environ(env),
        pytest.raises(ValidationError, match="back end"),
        TestClient(create_app()),
    ):
        pass
