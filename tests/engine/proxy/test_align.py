"""Alignment: a few steps lower L_GA, only factors move, the schedule warms up and decays."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from worker.engine.data import Example, Record, collate, encode_all, pad_token_id
from worker.engine.lowrank import LowRankLinear
from worker.engine.math.ipsvd import svd_factors
from worker.engine.models import LoadedModel
from worker.engine.proxy import ProxyConfig, build_proxy
from worker.engine.proxy.align import align, alignment_losses, lr_factor
from worker.engine.proxy.build import Proxy
from worker.engine.proxy.compress import replace_layer
from worker.engine.proxy.lm import forward_states, hidden_state_error
from worker.engine.proxy.probes import select_layers


def test_a_few_steps_lower_the_gradient_alignment_loss(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("qwen2")  # q/k/v carry biases: they must stay frozen too
    cfg = ProxyConfig(
        method="svd",
        sparsity=0.7,
        align_steps=5,
        align_batch_size=4,
        lr=5e-3,
        warmup_fraction=0.0,
        max_length=64,
        distill_steps=0,
    )
    proxy = build_proxy(target, records, ProxyConfig(**{**cfg.to_dict(), "align_steps": 0}))
    tok = target.tokenizer
    examples = encode_all(records[:4], tok, 64)
    batch = collate(examples, pad_token_id(tok))
    before = alignment_losses(target.model, proxy.model, batch, cfg, create_graph=False)
    frozen = {n: p.clone() for n, p in proxy.model.named_parameters() if not p.requires_grad}
    history = align(target.model, proxy.model, examples, cfg, pad_id=pad_token_id(tok))
    after = alignment_losses(target.model, proxy.model, batch, cfg, create_graph=False)
    assert len(history) == 5
    assert float(after.ga) < float(before.ga) - 0.05, (float(before.ga), float(after.ga))
    for n, p in proxy.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert proxy.model.config._attn_implementation != "eager"  # type: ignore[union-attr]
    assert all(p.grad is None for p in proxy.model.parameters())
    assert all(p.grad is None for p in target.model.parameters())


def test_alignment_losses_are_in_range_and_kl_vanishes_for_an_exact_proxy(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    # Full-rank factors (rank = min(out, in)) reproduce the target: KL 0, cosine 1 per layer.
    proxy = copy.deepcopy(target.model)
    for name, mod in select_layers(target.model, ProxyConfig().target_modules).items():
        A, B = svd_factors(mod.weight.detach(), min(mod.weight.shape))
        replace_layer(proxy, name, LowRankLinear(A, B))
    batch = collate(encode_all(records[:3], target.tokenizer, 64), pad_token_id(target.tokenizer))
    losses = alignment_losses(target.model, proxy, batch, ProxyConfig(), create_graph=False)
    assert float(losses.kl.detach()) == pytest.approx(0.0, abs=1e-5)
    assert float(losses.ga.detach()) == pytest.approx(0.0, abs=1e-4)
    assert all(c == pytest.approx((1.0, 1.0), abs=1e-4) for c in losses.cosines)
    assert len(losses.cosines) == 14


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    factors = [lr_factor(s, 20, 0.2) for s in range(20)]
    assert factors[0] < factors[1] < factors[3] <= 1.0
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert factors[-1] < 0.05


def test_distillation_lowers_kl_first_order_then_alignment_runs(
    make_target: Callable[..., LoadedModel],
    records: list[Record],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = make_target("llama")
    cfg = _distilling(distill_steps=6, align_steps=2, warmup_fraction=0.0)
    proxy, examples, batch = _unaligned(target, records, cfg)
    tok = target.tokenizer
    before = alignment_losses(target.model, proxy.model, batch, cfg, create_graph=False)
    frozen = {n: p.clone() for n, p in proxy.model.named_parameters() if not p.requires_grad}
    ticks: list[tuple[int, int]] = []

    def progress(_stage: str, done: int, total: int, _metrics: object = None) -> None:
        ticks.append((done, total))

    double = torch.autograd.grad
    calls: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("create_graph", False)))
        return double(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    history = align(
        target.model, proxy.model, examples, cfg, pad_id=pad_token_id(tok), progress=progress
    )
    monkeypatch.undo()
    after = alignment_losses(target.model, proxy.model, batch, cfg, create_graph=False)
    assert len(history) == 8
    assert [h.get("distill", 0.0) for h in history] == [1.0] * 6 + [0.0] * 2
    assert all("ga" in h for h in history[6:]) and not any("ga" in h for h in history[:6])
    # distillation is first order: the first 6 steps take no gradient of a gradient
    assert calls[:6] == [False] * 6 and any(calls[6:])
    kl0, kl1 = float(before.kl.detach()), float(after.kl.detach())
    assert kl1 < 0.8 * kl0, (kl0, kl1)
    assert ticks[0] == (0, 8) and ticks[-1] == (8, 8) and len(ticks) == 9
    for n, p in proxy.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert all(p.grad is None for p in proxy.model.parameters())


def test_distillation_runs_only_when_the_build_aligns(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    cfg = ProxyConfig(method="svd", distill_steps=2, align_steps=0, max_length=64)
    assert not cfg.aligns  # align_steps 0 is an unaligned proxy, distillation included
    proxy = build_proxy(target, records, cfg)
    assert proxy.manifest["alignment"]["steps"] == 0
    assert ProxyConfig().distill_steps == 200
    assert ProxyConfig.for_recipe("official").distill_steps == 0


def test_hidden_state_error_is_relative_per_position_and_needs_matching_layers() -> None:
    t = torch.zeros(1, 3, 2)
    t[0, 0] = torch.tensor([100.0, 0.0])  # a massive first position
    t[0, 1] = torch.tensor([0.0, 1.0])
    t[0, 2] = torch.tensor([5.0, 5.0])  # padding, outside the mask
    p = t.clone()
    p[0, 0, 0] += 10.0  # 1% of |h|^2 off
    p[0, 1, 1] += 1.0  # 100% off
    p[0, 2] = 0.0
    mask = torch.tensor([[True, True, False]])
    err = hidden_state_error([t, t], [p, t], mask)
    assert float(err) == pytest.approx(((0.01 + 1.0) / 2 + 0.0) / 2)
    assert float(hidden_state_error([t], [t], mask)) == 0.0
    with pytest.raises(ValueError, match="1 target layers against 2 proxy"):
        hidden_state_error([t], [t, t], mask)


def test_hidden_state_matching_brings_every_layer_nearer_the_target(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    """Distillation with ``hidden_weight`` ends with a smaller hidden-state error than the
    same steps on the KL term alone, and records the term in its history."""
    target = make_target("llama")
    cfg = _distilling(distill_steps=8, align_steps=1)
    base, examples, batch = _unaligned(target, records, cfg)
    tok = target.tokenizer
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        _, t_hidden = forward_states(target.model, batch, hidden=True)

    def error_after(weight: float) -> tuple[float, list[dict[str, float]]]:
        proxy = copy.deepcopy(base.model)
        run = ProxyConfig(**{**cfg.to_dict(), "hidden_weight": weight})
        history = align(target.model, proxy, examples, run, pad_id=pad_token_id(tok))
        with torch.no_grad():
            _, p_hidden = forward_states(proxy, batch, hidden=True)
        return float(hidden_state_error(t_hidden, p_hidden, mask)), history

    with torch.no_grad():
        _, start = forward_states(base.model, batch, hidden=True)
    before = float(hidden_state_error(t_hidden, start, mask))
    kl_only, kl_history = error_after(0.0)
    matched, history = error_after(10.0)
    assert matched < 0.7 * before and matched < kl_only, (before, kl_only, matched)
    assert all("hidden" in h for h in history[:8]) and "hidden" not in kl_history[0]
    assert history[0]["loss"] == pytest.approx(history[0]["kl"] + 10.0 * history[0]["hidden"])


def _distilling(**overrides: Any) -> ProxyConfig:
    """A small SVD proxy's config that distils at a high rate (``overrides`` set the steps)."""
    base: dict[str, Any] = dict(
        method="svd", sparsity=0.7, distill_lr=5e-3, align_batch_size=4, max_length=64
    )
    return ProxyConfig(**(base | overrides))


def _unaligned(
    target: LoadedModel, records: list[Record], cfg: ProxyConfig
) -> tuple[Proxy, list[Example], dict[str, torch.Tensor]]:
    """``cfg``'s proxy built without distillation or alignment, the first four records
    encoded, and their batch."""
    proxy = build_proxy(
        target, records, ProxyConfig(**{**cfg.to_dict(), "distill_steps": 0, "align_steps": 0})
    )
    examples = encode_all(records[:4], target.tokenizer, 64)
    return proxy, examples, collate(examples, pad_token_id(target.tokenizer))


def test_the_manifest_records_the_hidden_state_term_where_distillation_matched_states(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    cfg = _distilling(distill_steps=3, align_steps=1, hidden_weight=1.0, fidelity_samples=0)
    summary = build_proxy(target, records, cfg).manifest["alignment"]["distill"]
    assert summary["steps"] == 3
    assert 0 < summary["last_hidden"] < summary["first_hidden"], summary
    plain = build_proxy(target, records, ProxyConfig(**{**cfg.to_dict(), "hidden_weight": 0.0}))
    assert "last_hidden" not in plain.manifest["alignment"]["distill"]
