"""Fine-tuning a tiny model: the loss falls, checkpoints and the manifest are usable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.train.conftest import qa_records
from tests.tiny import save_tiny_model
from worker.engine.data import collate, encode_all, pad_token_id
from worker.engine.errors import ArtifactError, Cancelled, ConfigError, ModelNotFoundError
from worker.engine.math.nll import token_mean_loss
from worker.engine.models import LoadedModel, load_model
from worker.engine.train import (
    FinetuneConfig,
    finetune,
    list_checkpoints,
    load_checkpoint,
    random_slice,
    warmup,
)


def _train_loss(model: torch.nn.Module, loaded: LoadedModel) -> float:
    examples = encode_all(qa_records(), loaded.tokenizer, 64)
    batch = collate(examples, pad_token_id(loaded.tokenizer))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(token_mean_loss(logits, batch["labels"]))


def test_full_finetune_lowers_training_loss(tiny: LoadedModel, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    config = FinetuneConfig(epochs=8, lr=1e-2, batch_size=3, max_length=64, save_steps=(4, 8))
    result = finetune(tiny, qa_records(), config, tmp_path / "run")
    assert _train_loss(result.model, tiny) < 0.7 * _train_loss(tiny.model, tiny)
    # The target itself is untouched: callers keep using it (e.g. for scoring).
    for k, v in tiny.model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    m = result.manifest
    assert m["steps"] == 16 and m["steps_per_epoch"] == 2
    assert [c["step"] for c in m["checkpoints"]] == [4, 8, 16]
    # The last checkpoint of a full run is the final model itself, not a second copy.
    assert [c["path"] for c in m["checkpoints"]] == [
        "checkpoints/step-000004",
        "checkpoints/step-000008",
        ".",
    ]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step-000004",
        "step-000008",
    ]
    assert m["base"]["sha256"] == tiny.sha256
    assert m["data"]["examples"] == len(qa_records())
    saved = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert saved["config"] == config.to_dict()
    # The final model is an ordinary model directory.
    reloaded = load_model(str(tmp_path / "run"), cache_dir=tmp_path / "cache")
    assert _train_loss(reloaded.model, tiny) == pytest.approx(_train_loss(result.model, tiny))


def test_checkpoints_record_learning_rates_and_load_back(tiny: LoadedModel, tmp_path: Path) -> None:
    config = FinetuneConfig(
        epochs=2, lr=1e-3, batch_size=2, max_length=64, warmup_ratio=0.0, save_steps=(3,)
    )
    finetune(tiny, qa_records(), config, tmp_path / "run")
    ckpts = list_checkpoints(tmp_path / "run")
    assert [c.step for c in ckpts] == [3, 6]
    assert ckpts[0].lr == pytest.approx(1e-3 * 4 / 6)  # linear decay, step index 2 of 6
    assert ckpts[0].mean_lr == pytest.approx(1e-3 * (6 + 5 + 4) / 18)
    assert ckpts[1].epoch == pytest.approx(2.0)
    final = load_checkpoint(ckpts[-1], cache_dir=tmp_path / "cache")
    last = load_model(str(tmp_path / "run"), cache_dir=tmp_path / "cache")
    for k, v in last.model.state_dict().items():
        torch.testing.assert_close(final.model.state_dict()[k], v)


def test_lora_finetune_trains_adapters_and_merges(tiny: LoadedModel, tmp_path: Path) -> None:
    config = FinetuneConfig(epochs=8, lr=1e-2, batch_size=3, max_length=64, lora_rank=4)
    result = finetune(tiny, qa_records(), config, tmp_path / "run")
    # A random tiny LM head (std 0.02) caps how far adapters on the projections can move the
    # logits, so the drop is smaller than with full fine-tuning; it is still well beyond noise.
    assert _train_loss(result.model, tiny) < _train_loss(tiny.model, tiny) - 0.1
    (ckpt,) = list_checkpoints(tmp_path / "run")
    assert ckpt.kind == "lora"
    assert (ckpt.path / "adapter_model.safetensors").is_file()
    assert not (ckpt.path / "model.safetensors").exists()
    # Adapter + base == the merged final model; the embeddings were never trained.
    merged = load_checkpoint(ckpt, base=tiny)
    final = load_model(str(tmp_path / "run"), cache_dir=tmp_path / "cache")
    assert set(final.model.state_dict()) == set(tiny.model.state_dict())
    for k, v in final.model.state_dict().items():
        torch.testing.assert_close(merged.model.state_dict()[k], v, atol=1e-6, rtol=1e-5)
    with pytest.raises(ModelNotFoundError, match="LoRA adapter"):
        load_model(str(ckpt.path), cache_dir=tmp_path / "cache")
    emb = "model.embed_tokens.weight"
    torch.testing.assert_close(final.model.state_dict()[emb], tiny.model.state_dict()[emb])


def test_same_seed_same_run(tiny: LoadedModel, tmp_path: Path) -> None:
    config = FinetuneConfig(epochs=1, lr=1e-3, batch_size=2, max_length=64, lora_rank=2)
    a = finetune(tiny, qa_records(), config, tmp_path / "a").manifest["losses"]
    b = finetune(tiny, qa_records(), config, tmp_path / "b").manifest["losses"]
    c = finetune(
        tiny, qa_records(), FinetuneConfig(**{**config.to_dict(), "seed": 1}), tmp_path / "c"
    )
    assert a == b
    assert c.manifest["losses"] != a


def test_refuses_a_non_empty_output_directory(tiny: LoadedModel, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("x")
    with pytest.raises(ArtifactError, match="not empty"):
        finetune(tiny, qa_records(), FinetuneConfig(max_length=64), tmp_path / "run")


def test_cancel_stops_between_steps(tiny: LoadedModel, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    with pytest.raises(Cancelled):
        finetune(
            tiny,
            qa_records(),
            FinetuneConfig(epochs=3, batch_size=2, max_length=64),
            tmp_path / "run",
            progress=lambda stage, done, total, metrics=None: seen.append((stage, done, total)),
            should_stop=lambda: len(seen) >= 2,
        )
    assert seen == [("training", 1, 9), ("training", 2, 9)]
    assert not (tmp_path / "run" / "finetune.json").exists()


def test_warmup_uses_a_seeded_slice_and_spreads_checkpoints(
    tiny: LoadedModel, tmp_path: Path
) -> None:
    pool = qa_records() * 3
    pool = [r.__class__(**{**r.__dict__, "index": i, "id": str(i)}) for i, r in enumerate(pool)]
    chosen = random_slice(pool, 0.5, seed=3)
    assert len(chosen) == 9 and chosen == random_slice(pool, 0.5, seed=3)
    assert chosen != random_slice(pool, 0.5, seed=4)
    config = FinetuneConfig(epochs=2, batch_size=3, max_length=64, lora_rank=2, seed=3)
    result = warmup(tiny, pool, config, tmp_path / "w", fraction=0.5, checkpoints=3)
    assert result.manifest["kind"] == "warmup"
    assert result.manifest["warmup"]["ids"] == [r.id for r in chosen]
    assert [c.step for c in list_checkpoints(tmp_path / "w")] == [2, 4, 6]


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="lr must be positive"):
        FinetuneConfig(lr=0)
    with pytest.raises(ConfigError, match="unknown field"):
        FinetuneConfig.from_dict({"learning_rate": 1e-3})
    cfg = FinetuneConfig(save_steps=(5, 2, 5))
    assert cfg.save_steps == (2, 5)
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_other_architectures_train(tmp_path: Path, arch: Any, lora_rank: int) -> None:
    loaded = load_model(str(save_tiny_model(tmp_path / arch, arch)), cache_dir=tmp_path / "c")
    config = FinetuneConfig(epochs=4, lr=1e-2, batch_size=3, max_length=64, lora_rank=lora_rank)
    result = finetune(loaded, qa_records(), config, tmp_path / "run")
    assert result.manifest["losses"][-1] < result.manifest["losses"][0]
    assert _train_loss(result.model, loaded) < _train_loss(loaded.model, loaded)
    reloaded = load_model(str(tmp_path / "run"), cache_dir=tmp_path / "c")
    assert type(reloaded.model) is type(loaded.model)
