"""``target_model`` checks of the API for Hugging Face hub ids: the IPROX_ALLOWED_MODELS gate,
the default (presets and what the hub cache already holds), and the 422 that names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import targets
from service.config import Settings, get_settings
from service.errors import ValidationFailed
from service.targets import in_hub_cache, resolve_target_model

PROBLEM = "application/problem+json"


def _fake_snapshot(cache: Path, repo_id: str, commit: str = "c" * 40, ref: str = "main") -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    return cache


def _resolve(ref: str, allowed: tuple[str, ...] = (), roots: tuple[Path, ...] = ()) -> str:
    return resolve_target_model(
        ref, presets=["smollm2-135m-instruct"], model_roots=roots, allowed_models=allowed
    )


def test_by_default_only_cached_hub_models_pass(hub: Path) -> None:
    _fake_snapshot(hub, "acme/cached")
    assert _resolve("acme/cached") == "acme/cached"
    assert _resolve("acme/cached@" + "c" * 40) == "acme/cached@" + "c" * 40
    assert _resolve("smollm2-135m-instruct") == "smollm2-135m-instruct"
    with pytest.raises(ValidationFailed) as err:
        _resolve("acme/other")
    assert err.value.field == "target_model"
    assert "not in the workers' model cache" in err.value.detail
    assert "IPROX_ALLOWED_MODELS" in err.value.detail
    with pytest.raises(ValidationFailed, match="at revision 'v2'"):
        _resolve("acme/cached@v2")  # a revision the cache does not hold


def test_allowed_patterns_gate_hub_ids(hub: Path) -> None:
    _fake_snapshot(hub, "acme/cached")
    allowed = ("Qwen/*", "meta-llama/Llama-3.2-*")
    assert _resolve("Qwen/Qwen2.5-7B", allowed) == "Qwen/Qwen2.5-7B"
    assert _resolve("meta-llama/Llama-3.2-1B@main", allowed) == "meta-llama/Llama-3.2-1B@main"
    for ref in ("meta-llama/Llama-3.1-8B", "evil/Qwen", "qwen/Qwen2.5-7B", "acme/cached"):
        with pytest.raises(ValidationFailed, match="is not allowed here") as err:
            _resolve(ref, allowed)
        assert err.value.field == "target_model"


def test_a_model_root_folder_wins_over_a_hub_spelling(hub: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "acme" / "local").mkdir(parents=True)
    (root / "acme" / "local" / "config.json").write_text("{}")
    assert _resolve("acme/local", roots=(root,)) == str((root / "acme" / "local").resolve())


def test_in_hub_cache_needs_a_snapshot_with_a_config(hub: Path) -> None:
    assert not in_hub_cache("acme/x", None)
    (hub / "models--acme--x" / "snapshots" / ("d" * 40)).mkdir(parents=True)
    assert not in_hub_cache("acme/x", "d" * 40)  # no config.json: an interrupted download
    (hub / "models--acme--x" / "snapshots" / ("d" * 40) / "config.json").write_text("{}")
    assert in_hub_cache("acme/x", "d" * 40) and not in_hub_cache("acme/x", None)


@pytest.mark.parametrize(
    "ref", ["Qwen/Qwen2.5-0.5B", "a/b@refs/pr/1", "a/b/c", "../x", "org/..", "x", "a/b@"]
)
def test_the_api_spells_hub_ids_as_the_engine_does(ref: str) -> None:
    models = pytest.importorskip("worker.engine.models")
    assert targets.parse_hub_id(ref) == models.parse_hub_id(ref)


def test_settings_read_allowed_models_device_and_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPROX_ALLOWED_MODELS", "Qwen/*,meta-llama/*")
    monkeypatch.setenv("IPROX_DEVICE", "cuda:1")
    monkeypatch.setenv("IPROX_DTYPE", "bfloat16")
    s = Settings()
    assert s.allowed_models == ["Qwen/*", "meta-llama/*"]
    assert (s.device, s.dtype) == ("cuda:1", "bfloat16")
    monkeypatch.setenv("IPROX_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="device"):
        Settings()


def test_the_api_refuses_a_hub_id_it_does_not_allow(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any], hub: Path
) -> None:
    assert get_settings().allowed_models == []
    r = client.post("/jobs", json=select_body | {"target_model": "evil/anything"}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert [e["field"] for e in body["errors"]] == ["target_model"]
    assert "evil/anything" in body["errors"][0]["message"]
    _fake_snapshot(hub, "acme/tiny")
    r = client.post("/jobs", json=select_body | {"target_model": "acme/tiny"}, headers=auth)
    assert r.status_code == 202, r.text
    assert r.json()["request"]["target_model"] == "acme/tiny"
