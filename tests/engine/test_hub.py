"""Hugging Face hub ids, resolved from a fake cache with HF_HUB_OFFLINE=1 (no network)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.hubcache import add_to_hub_cache
from tests.tiny import save_tiny_model, tiny_model
from worker.cli import main
from worker.engine.errors import ModelNotFoundError
from worker.engine.models import load_model, parse_hub_id, resolve_model


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An offline hub cache under HF_HOME; any connection leaving loopback fails the test."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = socket.socket.connect

    def loopback_only(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a test tried to reach {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    yield cache


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("Qwen/Qwen2.5-0.5B", ("Qwen/Qwen2.5-0.5B", None)),
        ("meta-llama/Llama-3.2-1B@main", ("meta-llama/Llama-3.2-1B", "main")),
        ("org/name@" + "a" * 40, ("org/name", "a" * 40)),
        ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
        ("no-slash", None),
        ("a/b/c", None),
        ("../etc", None),
        ("org/..", None),
        ("/abs/path", None),
        ("org/na me", None),
    ],
)
def test_hub_id_spelling(ref: str, parsed: tuple[str, str | None] | None) -> None:
    assert parse_hub_id(ref) == parsed


def test_a_cached_hub_model_loads_offline(hub: Path, tmp_path: Path) -> None:
    commit = add_to_hub_cache(hub, "acme/tiny-qwen", save_tiny_model(tmp_path / "src", "qwen2"))
    source = resolve_model("acme/tiny-qwen")
    assert source.kind == "hub" and source.identity == f"hf:acme/tiny-qwen@{commit}"
    loaded = load_model("acme/tiny-qwen", cache_dir=tmp_path / "c")
    expected, _ = tiny_model("qwen2")
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor)
    assert loaded.identity == source.identity and len(loaded.sha256) == 64
    pinned = load_model(f"acme/tiny-qwen@{commit}", cache_dir=tmp_path / "c")
    assert pinned.sha256 == loaded.sha256


def test_a_revision_picks_its_snapshot(hub: Path, tmp_path: Path) -> None:
    old = add_to_hub_cache(hub, "acme/tiny", save_tiny_model(tmp_path / "a", seed=0), ref="v1")
    new = add_to_hub_cache(hub, "acme/tiny", save_tiny_model(tmp_path / "b", seed=1))
    assert old != new
    assert load_model("acme/tiny@v1").identity == f"hf:acme/tiny@{old}"
    assert load_model("acme/tiny").identity == f"hf:acme/tiny@{new}"
    assert load_model("acme/tiny@v1").sha256 != load_model("acme/tiny").sha256


def test_an_uncached_hub_model_is_refused_offline(hub: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"'acme/absent': HF_HUB_OFFLINE is set"):
        resolve_model("acme/absent")


def test_a_hub_snapshot_with_pickle_weights_only_is_refused(hub: Path, tmp_path: Path) -> None:
    src = save_tiny_model(tmp_path / "src")
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    add_to_hub_cache(hub, "acme/pickled", src)
    with pytest.raises(ModelNotFoundError, match=r"only pickle weights: pytorch_model.bin"):
        resolve_model("acme/pickled")


def test_a_local_folder_wins_over_a_hub_id(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_tiny_model(tmp_path / "acme" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("acme/tiny").kind == "hf_dir"


def test_the_cli_takes_a_hub_id(
    hub: Path, tmp_path: Path, write_jsonl: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    add_to_hub_cache(hub, "acme/tiny", save_tiny_model(tmp_path / "src", "gemma3"))
    task = write_jsonl(
        [{"prompt": "2+2?", "completion": "4"}, {"prompt": "hi", "completion": "yo"}]
    )
    argv = ["evaluate", "--model", "acme/tiny", "--task", str(task), "--device", "cpu"]
    assert main([*argv, "--cache-dir", str(tmp_path / "c")]) == 0
    assert '"model": "hf:acme/tiny@' in capsys.readouterr().out
    assert main(["evaluate", "--model", "acme/nope", "--task", str(task)]) == 2
    assert "[model_not_found]" in capsys.readouterr().err
