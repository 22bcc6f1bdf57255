"""save_proxy/load_proxy: bit-identical round trips, hash checks, corrupt files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from worker.engine.data import Record, collate, encode_all, pad_token_id
from worker.engine.errors import ArtifactError
from worker.engine.models import LoadedModel
from worker.engine.proxy import ProxyConfig, build_proxy, load_proxy, read_manifest, save_proxy
from worker.engine.proxy.build import Proxy

CFG = ProxyConfig(
    probe_samples=8, probe_positions=8, align_steps=2, align_batch_size=2, max_length=64
)


def _logits(model: torch.nn.Module, target: LoadedModel, records: list[Record]) -> torch.Tensor:
    batch = collate(encode_all(records[:4], target.tokenizer, 64), pad_token_id(target.tokenizer))
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture(params=["llama", "gemma3"])
def built(
    request: pytest.FixtureRequest, make_target: Callable[..., LoadedModel], records: list[Record]
) -> tuple[LoadedModel, Proxy]:
    target = make_target(request.param)
    return target, build_proxy(target, records, CFG)


def test_factors_round_trip_bit_for_bit(
    built: tuple[LoadedModel, Proxy], records: list[Record], tmp_path: Path
) -> None:
    target, proxy = built
    path = save_proxy(proxy, tmp_path / "p")
    assert path == tmp_path / "p" / "proxy.json"
    manifest = json.loads(path.read_text())
    for key in ("method", "sparsity", "target_params", "proxy_params", "layers", "target", "seed"):
        assert key in manifest
    assert manifest["storage"]["kind"] == "factors"
    assert manifest["target"]["sha256"] == target.sha256
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["alignment"]["steps"] == 2 and manifest["alignment"]["last"] is not None
    loaded = load_proxy(tmp_path / "p", target)
    assert torch.equal(
        _logits(loaded.model, target, records), _logits(proxy.model, target, records)
    )
    assert loaded.config == proxy.config
    assert loaded.manifest["proxy_params"] == proxy.manifest["proxy_params"]
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in proxy.model.named_parameters() if p.requires_grad}
    # Only factors are stored: far fewer bytes than the model.
    size = (tmp_path / "p" / "factors.safetensors").stat().st_size
    assert size < 4 * proxy.manifest["proxy_params"]


def test_standalone_round_trip_bit_for_bit(
    built: tuple[LoadedModel, Proxy], records: list[Record], tmp_path: Path
) -> None:
    target, proxy = built
    save_proxy(proxy, tmp_path / "s", storage="standalone")
    loaded = load_proxy(tmp_path / "s")  # no target needed
    assert torch.equal(
        _logits(loaded.model, target, records), _logits(proxy.model, target, records)
    )
    assert len(loaded.tokenizer) == len(target.tokenizer)


def test_wrong_target_hash_is_refused(
    make_target: Callable[..., LoadedModel], records: list[Record], tmp_path: Path
) -> None:
    target = make_target("llama", seed=0)
    save_proxy(build_proxy(target, records, CFG), tmp_path / "p")
    other = make_target("llama", seed=1)
    with pytest.raises(ArtifactError, match="sha256"):
        load_proxy(tmp_path / "p", other)


def test_corrupt_or_missing_files_are_artifact_errors(
    make_target: Callable[..., LoadedModel], records: list[Record], tmp_path: Path
) -> None:
    target = make_target("llama")
    with pytest.raises(ArtifactError, match="no proxy manifest"):
        load_proxy(tmp_path / "nothing", target)
    save_proxy(build_proxy(target, records, CFG), tmp_path / "p")
    weights = tmp_path / "p" / "factors.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        load_proxy(tmp_path / "p", target)
    weights.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_proxy(tmp_path / "p", target)
    (tmp_path / "p" / "proxy.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        read_manifest(tmp_path / "p")
