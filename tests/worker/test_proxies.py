"""A saved proxy made local for scoring: in place under a folder root; under a URL root a
cached download, checked against the hash the database recorded at build."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from service.artifacts import sha256_file, upload
from service.config import Settings
from worker.engine.errors import ArtifactError
from worker.tasks.proxies import local_proxy


def test_a_proxy_saved_as_a_path_is_used_in_place(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert local_proxy("p1", str(tmp_path / "p1"), "any", settings) == tmp_path / "p1"


def test_a_proxy_saved_under_a_url_is_downloaded_once_and_checked(tmp_path: Path) -> None:
    root = f"memory://iprox-{uuid.uuid4().hex[:8]}/artifacts"
    settings = Settings(home=tmp_path, artifact_root=root, work_dir=tmp_path / "work")
    built = tmp_path / "built"
    built.mkdir()
    (built / "proxy.json").write_text('{"method": "ipsvd"}')
    (built / "factors.safetensors").write_bytes(b"\x00" * 64)
    upload(built, f"{root}/proxies/p1")
    digest = sha256_file(built / "proxy.json")
    try:
        with pytest.raises(ArtifactError, match="does not match the hash") as err:
            local_proxy("p1", f"{root}/proxies/p1", "0" * 64, settings)
        assert err.value.code == "artifact"
        cache = tmp_path / "work" / "cache" / "proxies" / "p1"
        assert not cache.exists()  # a bad copy is not kept for the next shard
        assert local_proxy("p1", f"{root}/proxies/p1", digest, settings) == cache
        assert (cache / "factors.safetensors").read_bytes() == b"\x00" * 64
        MemoryFileSystem().rm(f"{root}/proxies/p1", recursive=True)
        assert local_proxy("p1", f"{root}/proxies/p1", digest, settings) == cache  # cached
        with pytest.raises(ArtifactError, match="cannot download"):
            local_proxy("p2", f"{root}/proxies/p2", digest, settings)
    finally:
        MemoryFileSystem().rm(root, recursive=True)
