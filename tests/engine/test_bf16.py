"""The bfloat16 path on the CPU for the tiny Llama / Gemma3 / Qwen2 configs: loading, proxy build
(probes, IPSVD, alignment with its double backward), saving and loading the proxy, fine-tuning
and evaluation, all through the entry points the CLI and the tasks use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.proxy.conftest import pool
from tests.tiny import ARCHES, save_tiny_model
from worker.engine.data import collate, encode_all, pad_token_id
from worker.engine.device import Runtime, resolve_runtime
from worker.engine.lowrank import LowRankLinear
from worker.engine.math.scores import spearman
from worker.engine.models import load_model
from worker.engine.pipeline import (
    ModelCache,
    ScoreConfig,
    SelectionConfig,
    build_proxy_from_files,
    iter_scores,
    run_selection,
)
from worker.engine.proxy import ProxyConfig, build_proxy, load_proxy, save_proxy
from worker.engine.train import FinetuneConfig, evaluate, finetune

BF16 = Runtime(torch.device("cpu"), torch.bfloat16)
CONFIG = ProxyConfig(
    probe_samples=8,
    probe_positions=8,
    align_steps=2,
    align_batch_size=2,
    max_length=48,
    batch_size=4,
)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: save_tiny_model(root / arch, arch) for arch in ARCHES}


@pytest.mark.parametrize("arch", ARCHES)
def test_proxy_build_runs_in_bfloat16(
    arch: str, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    target = load_model(str(model_dirs[arch]), cache_dir=tmp_path / "c", runtime=BF16)
    assert target.runtime == BF16
    assert {p.dtype for p in target.model.parameters()} == {torch.bfloat16}
    proxy = build_proxy(target, pool(), CONFIG)
    factors = [m for m in proxy.model.modules() if isinstance(m, LowRankLinear)]
    assert factors and all(m.A.dtype == m.B.dtype == torch.bfloat16 for m in factors)
    errors = [e["weighted_error"] for e in proxy.manifest["layers"] if e["kind"] == "lowrank"]
    assert all(0.0 < e < 1.0 for e in errors)  # IPSVD ran (in float64) and kept something
    history = proxy.manifest["alignment"]
    assert history["steps"] == 2
    for step in (history["first"], history["last"]):
        assert all(torch.isfinite(torch.tensor(step[k])) for k in ("loss", "ga", "kl", "grad_norm"))
    batch = collate(encode_all(pool()[:3], target.tokenizer, 48), pad_token_id(target.tokenizer))
    with torch.no_grad():
        logits = proxy.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert logits.logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits.logits).all())
    # Saved factors load back bit-exact onto a bf16 target, and cast onto a float32 one.
    save_proxy(proxy, tmp_path / "p")
    again = load_proxy(tmp_path / "p", target)
    for (n, a), (_, b) in zip(
        proxy.model.named_parameters(), again.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), n
    f32 = load_model(str(model_dirs[arch]), cache_dir=tmp_path / "c")
    cast = load_proxy(tmp_path / "p", f32)
    assert {p.dtype for p in cast.model.parameters()} == {torch.float32}


def test_bf16_probes_stay_close_to_float32(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Same weights, same probe positions: the bf16 build's factorisation errors track the
    float32 build's (bf16 activations carry ~3 significant digits)."""
    cfg = ProxyConfig(**{**CONFIG.to_dict(), "align_steps": 0})
    out = {}
    for rt in (BF16, resolve_runtime("cpu", "float32")):
        target = load_model(str(model_dirs["llama"]), cache_dir=tmp_path / "c", runtime=rt)
        layers = build_proxy(target, pool(), cfg).manifest["layers"]
        out[rt.dtype] = torch.tensor([e["weighted_error"] for e in layers if e["rank"]])
    torch.testing.assert_close(out[torch.bfloat16], out[torch.float32], rtol=0.1, atol=0.02)


def test_pipeline_builds_a_proxy_on_the_given_runtime(
    model_dirs: dict[str, Path], tmp_path: Path, write_jsonl: Any
) -> None:
    data = write_jsonl(
        [{"prompt": r.prompt[0]["content"], "completion": r.response} for r in pool()]
    )
    manifest = build_proxy_from_files(
        str(model_dirs["qwen2"]), data, tmp_path / "p", CONFIG, runtime=BF16
    )
    assert manifest["alignment"]["steps"] == 2
    target = load_model(str(model_dirs["qwen2"]), runtime=BF16)
    proxy = load_proxy(tmp_path / "p", target)
    assert next(proxy.model.parameters()).dtype == torch.bfloat16


def test_finetune_and_evaluate_in_bfloat16(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    target = load_model(str(model_dirs["gemma3"]), cache_dir=tmp_path / "c", runtime=BF16)
    records = pool(8)
    config = FinetuneConfig(epochs=1, batch_size=4, max_length=48, lr=1e-3, lora_rank=4)
    result = finetune(target, records, config, tmp_path / "run")
    assert next(result.model.parameters()).dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(x)) for x in result.manifest["losses"])
    report = evaluate(result.model, target.tokenizer, records, max_length=48)
    assert report.n == 8 and 0.0 < report.nll < 20.0


@pytest.mark.parametrize("features", ["exact", "projected"])
@pytest.mark.parametrize("arch", ARCHES)
def test_bf16_scores_rank_like_float32(
    arch: str, features: str, model_dirs: dict[str, Path], tmp_path: Path, write_jsonl: Any
) -> None:
    """Scores of the full target in bf16 against the same in float32, through the pipeline."""
    rows = [{"prompt": r.prompt[0]["content"], "completion": r.response} for r in pool(32)]
    train, target = write_jsonl(rows, "pool.jsonl"), write_jsonl(rows[:4], "target.jsonl")
    config = ScoreConfig(max_length=48, proj_dim=1024, features=features)  # type: ignore[arg-type]
    scores = {}
    for rt in (BF16, resolve_runtime("cpu", "float32")):
        got: dict[int, float] = {}
        for b in iter_scores(
            str(model_dirs[arch]), train, [target], proxy=None, config=config, runtime=rt
        ):
            got.update(zip(b.indices, b.scores, strict=True))
        scores[rt.dtype] = torch.tensor([got[i] for i in sorted(got)])
    bf, f32 = scores[torch.bfloat16], scores[torch.float32]
    assert not torch.equal(bf, f32)  # the bf16 weights were really used
    assert spearman(bf, f32) >= 0.99


def test_run_selection_takes_a_runtime_and_a_model_cache(
    model_dirs: dict[str, Path], write_jsonl: Any
) -> None:
    rows = [{"prompt": r.prompt[0]["content"], "completion": r.response} for r in pool(12)]
    train, target = write_jsonl(rows, "pool.jsonl"), write_jsonl(rows[:2], "target.jsonl")
    cache = ModelCache()
    for _ in range(2):
        result = run_selection(
            str(model_dirs["llama"]),
            train,
            [target],
            proxy=ProxyConfig(**{**CONFIG.to_dict(), "align_steps": 0}),
            config=ScoreConfig(max_length=48),
            selection=SelectionConfig(top_k=3),
            runtime=BF16,
            models=cache,
        )
        assert result.summary["runtime"] == {"device": "cpu", "dtype": "bfloat16"}
        assert len(result.ranked) == 3 and len(result.scores) == 12
    assert (cache.misses, cache.hits) == (1, 1)
