"""build_proxy on the three tiny architectures: layers, parameter counts, baselines, callbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.engine.proxy.conftest import pool
from tests.tiny import ARCHES
from worker.engine.data import Record, collate, encode_all, pad_token_id
from worker.engine.errors import Cancelled, ConfigError
from worker.engine.lowrank import LowRankLinear, parameter_count
from worker.engine.models import LoadedModel
from worker.engine.progress import Metrics
from worker.engine.proxy import ProxyConfig, build_proxy
from worker.engine.proxy.build import split_records
from worker.engine.proxy.lm import loss_positions, temperature_kl

FAST: dict[str, Any] = dict(
    probe_samples=8, probe_positions=8, align_steps=0, max_length=64, batch_size=4
)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("method", ["ipsvd", "svd", "random"])
def test_compressed_layers_and_parameter_counts(
    arch: str, method: str, make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target(arch)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    rho = 0.5
    proxy = build_proxy(target, records, ProxyConfig(method=method, sparsity=rho, **FAST))  # type: ignore[arg-type]
    m = proxy.manifest
    lowrank = {n: mod for n, mod in proxy.model.named_modules() if isinstance(mod, LowRankLinear)}
    assert len(lowrank) == m["compressed_layers"] == 2 * 7  # 2 decoder layers x 7 projections
    assert m["target_params"] == parameter_count(target.model)
    assert m["proxy_params"] == parameter_count(proxy.model)
    saved = sum(e["target_params"] - e["proxy_params"] for e in m["layers"])
    assert m["proxy_params"] == m["target_params"] - saved
    for e in m["layers"]:
        mod = lowrank[e["name"]]
        assert mod.rank == e["rank"]
        dense = e["out_features"] * e["in_features"]
        factors = e["rank"] * (e["out_features"] + e["in_features"])
        assert factors <= (1 - rho) * dense < factors + e["out_features"] + e["in_features"]
    assert rho <= m["achieved_sparsity"] < rho + 0.05  # ranks are floored: never fewer removed
    # Only the factors train; the target is untouched.
    trainable = {n for n, p in proxy.model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{f}" for n in lowrank for f in ("A", "B")}
    for k, v in target.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    batch = collate(encode_all(records[:3], target.tokenizer, 64), pad_token_id(target.tokenizer))
    with torch.no_grad():
        logits = proxy.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    assert bool(torch.isfinite(logits).all())
    if method == "ipsvd":
        assert m["probe"]["columns_per_layer"] == 8 * 8
        assert all(0.0 <= e["weighted_error"] < 1.0 for e in m["layers"])


def _kl_to_target(
    target: LoadedModel, proxy_model: torch.nn.Module, records: list[Record]
) -> float:
    batch = collate(encode_all(records, target.tokenizer, 64), pad_token_id(target.tokenizer))
    with torch.no_grad():
        t = target.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        p = proxy_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(temperature_kl(t, p, loss_positions(batch["labels"]), 1.0))


@pytest.mark.parametrize("arch", ARCHES)
def test_ipsvd_stays_closer_to_the_target_than_svd_and_random(
    arch: str, make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target(arch)
    kl = {}
    for method in ("ipsvd", "svd", "random"):
        cfg = ProxyConfig(method=method, sparsity=0.7, **{**FAST, "probe_samples": 16})  # type: ignore[arg-type]
        kl[method] = _kl_to_target(target, build_proxy(target, records, cfg).model, records)
    assert kl["ipsvd"] < kl["svd"] < kl["random"], kl


def test_layers_that_would_not_save_stay_dense(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    proxy = build_proxy(target, records, ProxyConfig(method="svd", sparsity=0.0, **FAST))
    for e in proxy.manifest["layers"]:
        out_f, in_f = e["out_features"], e["in_features"]
        if out_f == in_f:  # r = n/2 holds exactly n^2 parameters: no saving, stays dense
            assert e["kind"] == "dense" and e["rank"] is None
            assert e["proxy_params"] == e["target_params"]
            assert type(proxy.model.get_submodule(e["name"])) is torch.nn.Linear
        else:  # the floor leaves a small saving even at rho 0
            assert e["kind"] == "lowrank" and e["proxy_params"] < e["target_params"]
    assert proxy.manifest["dense_layers"] == 4  # q_proj and o_proj (32 x 32) in 2 layers


def test_rank_rounding_is_an_option(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    proxy = build_proxy(
        target, records, ProxyConfig(method="svd", sparsity=0.3, rank_multiple=4, **FAST)
    )
    ranks = [e["rank"] for e in proxy.manifest["layers"] if e["rank"] is not None]
    assert ranks and all(r % 4 == 0 for r in ranks)


def test_probe_and_alignment_sets_are_seeded_and_disjoint(records: list[Record]) -> None:
    cfg = ProxyConfig(probe_samples=10, align_samples=6, align_steps=1)
    probe, aligned = split_records(records, cfg)
    again = split_records(records, cfg)
    assert [r.id for r in probe] == [r.id for r in again[0]]
    assert len(probe) == 10 and len(aligned) == 6
    assert not {r.id for r in probe} & {r.id for r in aligned}
    other = split_records(records, ProxyConfig(probe_samples=10, align_steps=1, seed=1))[0]
    assert [r.id for r in other] != [r.id for r in probe]


def test_the_default_alignment_set_gives_distillation_fresh_batches() -> None:
    records = pool(1000)

    def n_align(**given: Any) -> int:
        return len(
            split_records(records, ProxyConfig(probe_samples=64, align_steps=20, **given))[1]
        )

    # 1% of the pool without distillation; a batch per distillation step with it
    assert n_align(distill_steps=0) == 10
    assert n_align(distill_steps=50, align_batch_size=4) == 200
    # never more than half the records left after probing: (1000 - 64) // 2
    assert n_align(distill_steps=200, align_batch_size=4) == 468
    # a given size wins
    assert n_align(distill_steps=200, align_samples=30) == 30
    # no alignment, no alignment set
    assert len(split_records(records, ProxyConfig(align_steps=0))[1]) == 0


def test_no_matching_layer_is_a_config_error(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    with pytest.raises(ConfigError, match="target_modules"):
        build_proxy(make_target("llama"), records, ProxyConfig(target_modules=("nope",), **FAST))  # type: ignore[arg-type]


def test_progress_is_reported_and_stop_cancels(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    seen: list[tuple[str, int, int]] = []
    metrics: list[Metrics] = []

    def progress(s: str, d: int, t: int, m: Metrics | None = None, /) -> None:
        seen.append((s, d, t))
        if m is not None:
            metrics.append(m)

    target = make_target("llama")
    cfg = ProxyConfig(**{**FAST, "align_steps": 2, "align_batch_size": 2, "distill_steps": 0})  # type: ignore[arg-type]
    build_proxy(target, records, cfg, progress=progress)
    stages = {s for s, _, _ in seen}
    assert stages == {"compressing", "aligning", "fidelity"}
    assert ("aligning", 0, 2) in seen and ("aligning", 2, 2) in seen
    # each alignment step reports its losses beside the tick
    assert [m["step"] for m in metrics] == [1, 2]
    assert all({"L_GA", "KL", "loss"} <= set(m) and m["L_GA"] >= 0 for m in metrics)
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        build_proxy(target, records, cfg, should_stop=lambda: next(calls) >= 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [("sparsity", 1.0), ("ridge", 0.0), ("method", "pca"), ("probe_positions", 0), ("lr", -1.0)],
)
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ProxyConfig(**{field: value})  # type: ignore[arg-type]


def test_config_round_trips_through_a_dict() -> None:
    cfg = ProxyConfig(method="svd", sparsity=0.3, target_modules=("q_proj",), align_samples=7)
    assert ProxyConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        ProxyConfig.from_dict({"bogus": 1})
