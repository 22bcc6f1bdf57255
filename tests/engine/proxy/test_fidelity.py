"""The fidelity report: slices disjoint and seeded, exact scores against a naive per-sample loop,
identical models agree perfectly, small pools shrink the report, and it lands in the manifest."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.proxy.conftest import pool
from worker.engine.data import Record, collate, pad_token_id, record_from_obj
from worker.engine.errors import Cancelled, ConfigError
from worker.engine.models import LoadedModel
from worker.engine.proxy import ProxyConfig, build_proxy, load_proxy, save_proxy
from worker.engine.proxy.fidelity import (
    exact_calibration_scores,
    fidelity_report,
    fidelity_slices,
    summary_line,
)
from worker.engine.scoring.config import ScoreConfig
from worker.engine.scoring.hooks import per_sample_loss, scored_parameters

FAST: dict[str, Any] = dict(
    probe_samples=8, probe_positions=8, align_steps=0, max_length=64, batch_size=4
)


def _targets(n: int) -> list[Record]:
    return [
        record_from_obj({"id": f"t{i}", "question": f"{i} + {i}?", "answer": str(2 * i)}, i, "t")
        for i in range(n)
    ]


def test_calibration_slice_is_disjoint_from_probes_and_alignment_and_seeded(
    make_target: Callable[..., LoadedModel],
) -> None:
    target = make_target("llama")
    records = pool(60)
    cfg = ProxyConfig(
        method="ipsvd",
        **{**FAST, "align_steps": 1, "align_samples": 6, "align_batch_size": 2},  # type: ignore[arg-type]
        fidelity_samples=20,
        fidelity_targets=8,
    )
    m = build_proxy(target, records, cfg).manifest
    report = m["fidelity"]
    fitted = {*m["probe"]["record_ids"], *m["alignment"]["record_ids"]}
    assert len(fitted) == 8 + 6
    cal, tgt = report["calibration"]["record_ids"], report["targets"]["record_ids"]
    assert len(cal) == report["calibration"]["records"] == 20
    assert len(tgt) == report["targets"]["records"] == 8 and report["targets"]["source"] == "pool"
    assert len(set(cal)) == 20 and not set(cal) & fitted and not set(tgt) & (fitted | set(cal))
    assert report["calibration"]["eligible_pool_records"] == 60 - 14
    assert m["timings_s"]["fidelity"] > 0
    # The same seed draws the same slices; another seed others.
    slices = fidelity_slices(records, target.tokenizer, cfg, exclude_ids=fitted)
    assert slices.calibration_ids == cal and slices.target_ids == tgt
    other = fidelity_slices(
        records, target.tokenizer, ProxyConfig(**{**cfg.to_dict(), "seed": 1}), exclude_ids=fitted
    )
    assert other.calibration_ids != cal


def _naive_scores(
    model: torch.nn.Module, tok: Any, cal: list[Any], tgt: list[Any], layers: tuple[str, ...]
) -> torch.Tensor:
    """TracIn cosines from autograd, one sample at a time: the definition the report rests on."""
    params = scored_parameters(model, layers)
    pad = pad_token_id(tok)

    def grad(example: Any) -> torch.Tensor:
        batch = collate([example], pad)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = per_sample_loss(logits, batch["labels"]).sum()
        grads = torch.autograd.grad(loss, params)
        return torch.cat([g.flatten() for g in grads]).double()

    for p in params:
        p.requires_grad_(True)
    v = torch.stack([g / g.norm() for g in map(grad, tgt)]).mean(dim=0)
    out = torch.stack([grad(e) @ v / grad(e).norm() for e in cal])
    for p in params:
        p.requires_grad_(False)
    return out


@pytest.mark.parametrize("lowrank", [False, True])
def test_exact_scores_match_a_naive_per_sample_loop(
    make_target: Callable[..., LoadedModel], lowrank: bool
) -> None:
    target = make_target("llama")
    cfg = ProxyConfig(method="svd", sparsity=0.5, **FAST, fidelity_samples=7, fidelity_targets=3)  # type: ignore[arg-type]
    model = build_proxy(target, pool(30), cfg).model if lowrank else target.model
    slices = fidelity_slices(pool(30), target.tokenizer, cfg, exclude_ids=())
    layers = ScoreConfig().layers
    got = exact_calibration_scores(
        model, slices, layers=layers, batch_size=3, pad_id=pad_token_id(target.tokenizer), label=""
    )
    want = _naive_scores(model, target.tokenizer, slices.calibration, slices.targets, layers)
    assert got.scores.shape == (7,)
    assert torch.allclose(got.scores, want, atol=1e-4), (got.scores, want)
    assert got.scored_params == sum(p.numel() for p in scored_parameters(model, layers))


def test_a_model_against_itself_agrees_perfectly(
    make_target: Callable[..., LoadedModel],
) -> None:
    target = make_target("qwen2")
    cfg = ProxyConfig(**FAST, fidelity_samples=30, fidelity_targets=5)  # type: ignore[arg-type]
    same = copy.deepcopy(target.model)
    report = fidelity_report(target.model, same, target.tokenizer, pool(40), cfg, exclude_ids=())
    assert report is not None and report["status"] == "measured"
    assert report["spearman"] == pytest.approx(1.0) and report["top_overlap"] == 1.0
    assert report["top_k"] == 3  # 10% of 30
    for side in ("target", "proxy"):
        assert report[side]["seconds_per_sample"] > 0
        assert report[side]["scored_params"] > 0
    assert "Spearman 1.000, top-10% overlap 1.00 (top 3)" in summary_line(report)


def test_a_strongly_compressed_proxy_does_not_score_perfectly(
    make_target: Callable[..., LoadedModel],
) -> None:
    # The measure can fail: a random-subspace proxy at rho 0.9 ranks differently.
    target = make_target("llama")
    cfg = ProxyConfig(method="random", sparsity=0.9, **FAST, fidelity_samples=30)  # type: ignore[arg-type]
    report = build_proxy(target, pool(60), cfg).manifest["fidelity"]
    assert report["status"] == "measured"
    assert report["spearman"] is not None and report["spearman"] < 0.99
    assert report["proxy"]["scored_params"] < report["target"]["scored_params"]


def test_the_job_targets_are_sampled_down_to_the_cap(
    make_target: Callable[..., LoadedModel],
) -> None:
    target = make_target("llama")
    cfg = ProxyConfig(method="svd", **FAST, fidelity_samples=10, fidelity_targets=4)  # type: ignore[arg-type]
    tgts = _targets(9)
    m = build_proxy(target, pool(20), cfg, targets=tgts).manifest
    t = m["fidelity"]["targets"]
    assert t["source"] == "job" and t["records"] == 4 and t["available"] == 9
    assert set(t["record_ids"]) <= {r.id for r in tgts}
    # Pool records are all calibration candidates when the job brings its own target.
    assert m["fidelity"]["calibration"]["records"] == 10


def test_a_small_pool_gives_a_smaller_slice_and_a_tiny_one_a_skipped_report(
    make_target: Callable[..., LoadedModel],
) -> None:
    target = make_target("llama")
    cfg = ProxyConfig(method="ipsvd", **FAST)  # type: ignore[arg-type]
    m = build_proxy(target, pool(14), cfg).manifest  # 8 probes, 6 left: 3 targets, 3 calibration
    report = m["fidelity"]
    assert report["status"] == "measured"
    assert report["calibration"]["requested"] == 64 and report["calibration"]["records"] == 3
    assert report["targets"]["records"] == 3
    m = build_proxy(target, pool(9), cfg).manifest  # 8 probes, 1 left: no calibration pair
    report = m["fidelity"]
    assert report["status"] == "skipped" and "too few records" in report["reason"]
    assert report["spearman"] is None and report["calibration"]["records"] == 1
    assert report["targets"]["records"] == 0
    assert "fidelity skipped: too few records" in summary_line(report)


def test_records_without_a_response_token_are_skipped_and_counted(
    make_target: Callable[..., LoadedModel],
) -> None:
    target = make_target("llama")
    long_prompt = record_from_obj({"id": "x", "prompt": "word " * 40, "completion": ""}, 0, "x")
    cfg = ProxyConfig(method="svd", **FAST, fidelity_samples=5, fidelity_targets=2)  # type: ignore[arg-type]
    # Seven records, all drawn: the empty one is skipped wherever it falls, and counted.
    slices = fidelity_slices([long_prompt, *pool(6)], target.tokenizer, cfg, exclude_ids=())
    assert "x" not in slices.calibration_ids + slices.target_ids
    assert slices.skipped == 1 and len(slices.targets) == 2
    assert len(slices.calibration) + len(slices.targets) == 6


def test_no_report_when_turned_off_and_stop_cancels_it(
    make_target: Callable[..., LoadedModel],
) -> None:
    target = make_target("llama")
    off = ProxyConfig(method="svd", **FAST, fidelity_samples=0)  # type: ignore[arg-type]
    m = build_proxy(target, pool(30), off).manifest
    assert "fidelity" not in m and "fidelity" not in m["timings_s"]
    assert summary_line(None).startswith("fidelity: no report")
    on = ProxyConfig(method="svd", **FAST)  # type: ignore[arg-type]
    with pytest.raises(Cancelled):
        fidelity_report(
            target.model,
            target.model,
            target.tokenizer,
            pool(30),
            on,
            exclude_ids=(),
            should_stop=lambda: True,
        )


def test_the_report_survives_save_and_load_and_old_manifests_still_load(
    tmp_path: Path, make_target: Callable[..., LoadedModel]
) -> None:
    target = make_target("llama")
    cfg = ProxyConfig(method="svd", **FAST, fidelity_samples=6, fidelity_targets=2)  # type: ignore[arg-type]
    proxy = build_proxy(target, pool(20), cfg)
    save_proxy(proxy, tmp_path / "p")
    assert load_proxy(tmp_path / "p", target).manifest["fidelity"] == proxy.manifest["fidelity"]
    # A proxy saved before the report existed: no fidelity, no fidelity fields in its config.
    path = tmp_path / "p" / "proxy.json"
    old = json.loads(path.read_text())
    del old["fidelity"], old["timings_s"]["fidelity"]
    for key in ("fidelity_samples", "fidelity_targets"):
        del old["config"][key]
    path.write_text(json.dumps(old))
    loaded = load_proxy(tmp_path / "p", target)
    assert "fidelity" not in loaded.manifest and loaded.config.fidelity_samples == 64


@pytest.mark.parametrize(
    ("field", "value"), [("fidelity_samples", 1), ("fidelity_samples", -1), ("fidelity_targets", 0)]
)
def test_fidelity_config_errors_name_the_field(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=field):
        ProxyConfig(**{field: value})  # type: ignore[arg-type]
