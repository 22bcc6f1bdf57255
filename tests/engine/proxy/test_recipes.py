"""The factor gauge, rank allocation and the two recipes on tiny targets."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from worker.engine.data import Record, collate, encode_all, pad_token_id
from worker.engine.errors import ConfigError
from worker.engine.lowrank import LowRankLinear
from worker.engine.math.ipsvd import covariance_root
from worker.engine.models import LoadedModel
from worker.engine.proxy import ProxyConfig, build_proxy, load_proxy, save_proxy
from worker.engine.proxy.config import OFFICIAL

FAST: dict[str, Any] = dict(
    probe_samples=8, probe_positions=8, align_steps=0, max_length=64, batch_size=4
)


def _logits(model: torch.nn.Module, target: LoadedModel, records: list[Record]) -> torch.Tensor:
    batch = collate(encode_all(records[:4], target.tokenizer, 64), pad_token_id(target.tokenizer))
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _factors(model: torch.nn.Module) -> dict[str, LowRankLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


@pytest.mark.parametrize("method", ["ipsvd", "svd"])
def test_balanced_factors_compute_the_same_function(
    method: str, make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    raw = build_proxy(target, records, ProxyConfig(method=method, balance=False, **FAST))  # type: ignore[arg-type]
    bal = build_proxy(target, records, ProxyConfig(method=method, balance=True, **FAST))  # type: ignore[arg-type]
    torch.testing.assert_close(
        _logits(bal.model, target, records),
        _logits(raw.model, target, records),
        rtol=1e-4,
        atol=1e-4,
    )
    for name, mod in _factors(bal.model).items():
        torch.testing.assert_close(
            torch.linalg.vector_norm(mod.A, dim=0), torch.linalg.vector_norm(mod.B, dim=1)
        )
        torch.testing.assert_close(
            mod.dense_weight(), _factors(raw.model)[name].dense_weight(), rtol=1e-4, atol=1e-6
        )
    assert bal.manifest["gauge"] == "balanced" and raw.manifest["gauge"] == "as factorised"
    # the imbalance as factorised is recorded either way
    assert all(e["factor_imbalance"] > 0 for e in bal.manifest["layers"] if e["kind"] == "lowrank")


def test_global_ranks_spend_the_uniform_budget(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    uni = build_proxy(target, records, ProxyConfig(sparsity=0.5, **FAST))
    glo = build_proxy(target, records, ProxyConfig(sparsity=0.5, rank_allocation="global", **FAST))
    budget = sum(e["proxy_params"] for e in uni.manifest["layers"])
    spent = sum(e["proxy_params"] for e in glo.manifest["layers"])
    assert abs(spent - budget) <= 0.005 * budget
    ranks_u = {e["name"]: e["rank"] for e in uni.manifest["layers"]}
    ranks_g = {e["name"]: e["rank"] for e in glo.manifest["layers"]}
    assert ranks_u != ranks_g  # the spectra differ between layers
    for name, r in ranks_g.items():  # the floor: a quarter of the uniform rank at least
        assert r is None or r >= math.ceil(0.25 * ranks_u[name])
    by_type = glo.manifest["ranks_by_type"]
    assert set(by_type) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert all(v["layers"] == 2 for v in by_type.values())
    assert glo.manifest["rank_allocation"] == "global"


def test_global_allocation_needs_a_spectrum() -> None:
    with pytest.raises(ConfigError, match="rank_allocation"):
        ProxyConfig(method="random", rank_allocation="global")


def test_official_recipe_resolves_the_authors_defaults_and_takes_overrides() -> None:
    off = ProxyConfig.for_recipe("official")
    for name, value in OFFICIAL.items():
        assert getattr(off, name) == value, name
    assert off.recipe == "official"
    assert off.kl_weight == 0.0 and off.lr_schedule == "constant" and off.weight_decay == 0.01
    tuned = ProxyConfig.for_recipe("official", kl_weight=0.1)
    assert tuned.kl_weight == 0.1 and tuned.ridge_mode == "absolute"
    assert ProxyConfig.for_recipe("iprox") == ProxyConfig()
    with pytest.raises(ConfigError, match="recipe"):
        ProxyConfig.for_recipe("paper")
    with pytest.raises(ConfigError, match="unknown"):
        ProxyConfig.for_recipe("official", nonsense=1)


def test_official_recipe_builds_with_epochs_and_all_token_probes(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    # The tiny layers are far below 128: without a smaller multiple every layer stays dense.
    config = ProxyConfig.for_recipe(
        "official",
        rank_multiple=4,
        probe_samples=8,
        max_length=64,
        align_samples=8,
        align_epochs=2.0,
    )
    proxy = build_proxy(target, records, config)
    m = proxy.manifest
    assert m["recipe"] == "official" and m["config"]["ridge_mode"] == "absolute"
    assert m["probe"]["tokens"] == "all"
    assert m["alignment"]["steps"] == 2 * (8 // 4)
    ranks = [e["rank"] for e in m["layers"] if e["rank"] is not None]
    assert ranks and all(r % 4 == 0 for r in ranks)
    assert all(
        h["lr"] == pytest.approx(1e-4) for h in [m["alignment"]["first"], m["alignment"]["last"]]
    )
    # all-token probes see prompt tokens too: more candidate positions than response-only
    resp = build_proxy(
        target,
        records,
        ProxyConfig(probe_samples=8, probe_positions=64, max_length=64, align_steps=0),
    )
    alltok = build_proxy(
        target,
        records,
        ProxyConfig(
            probe_samples=8, probe_positions=64, max_length=64, align_steps=0, probe_tokens="all"
        ),
    )
    assert (
        alltok.manifest["probe"]["columns_per_layer"] > resp.manifest["probe"]["columns_per_layer"]
    )


def test_absolute_ridge_is_added_as_is() -> None:
    X = torch.randn(6, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e-3
    assert covariance_root(X, 1e-3, absolute=True).lam == 1e-3
    rel = covariance_root(X, 1e-3)
    assert rel.lam == pytest.approx(1e-3 * float(rel.eig.sum()) / 6)


def test_old_proxies_are_balanced_when_loaded(
    make_target: Callable[..., LoadedModel], records: list[Record], tmp_path: Path
) -> None:
    target = make_target("llama")
    raw = build_proxy(target, records, ProxyConfig(balance=False, **FAST))
    manifest_path = save_proxy(raw, tmp_path / "p")
    out = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    del manifest["gauge"]  # as written before the gauge existed
    for key in ("balance",):
        manifest["config"].pop(key)
    manifest_path.write_text(json.dumps(manifest))
    loaded = load_proxy(out, target)
    assert loaded.manifest["gauge"] == "balanced on load"
    for mod in _factors(loaded.model).values():
        torch.testing.assert_close(
            torch.linalg.vector_norm(mod.A, dim=0), torch.linalg.vector_norm(mod.B, dim=1)
        )
    torch.testing.assert_close(
        _logits(loaded.model, target, records),
        _logits(raw.model, target, records),
        rtol=1e-4,
        atol=1e-4,
    )
    # a proxy saved with its gauge recorded loads as saved
    again = load_proxy(save_proxy(raw, tmp_path / "q").parent, target)
    for name, mod in _factors(again.model).items():
        assert torch.equal(mod.A, _factors(raw.model)[name].A)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_finite_difference_alignment_gradient_matches_the_double_backward(
    dtype: torch.dtype, make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    from worker.engine.proxy.align import (
        alignment_losses,
        eager_attention,
        finite_difference_gradients,
    )

    target = make_target("llama")
    target.model.to(dtype)  # type: ignore[arg-type]
    proxy = build_proxy(target, records, ProxyConfig(sparsity=0.5, **FAST)).model.to(dtype)
    params = [p for p in proxy.parameters() if p.requires_grad]
    batch = collate(encode_all(records[:4], target.tokenizer, 64), pad_token_id(target.tokenizer))
    config = ProxyConfig(kl_weight=0.1)
    with eager_attention(proxy), eager_attention(target.model):
        exact = alignment_losses(target.model, proxy, batch, config, create_graph=True)
        exact.total.backward()  # type: ignore[no-untyped-call]
        want = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = None
        approx = finite_difference_gradients(target.model, proxy, batch, config)
        got = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
    assert float(approx.ga) == pytest.approx(float(exact.ga.detach()), rel=1e-5)
    assert float(approx.kl) == pytest.approx(float(exact.kl.detach()), rel=1e-5)
    cos = float(torch.nn.functional.cosine_similarity(got.double(), want.double(), dim=0))
    assert cos > (0.9999 if dtype == torch.float64 else 0.999)
    assert float(got.norm() / want.norm()) == pytest.approx(1.0, abs=0.05)
    for p, b in zip(params, before, strict=True):  # the shifted factors were put back
        assert torch.equal(p.detach(), b)


def test_gram_term_matches_per_sample_autograd(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    """The proxy's and target's cosine matrices from per-token captures equal the cosines of
    per-sample gradients formed one sample at a time; the batch-mean gradients match autograd."""
    from worker.engine.math.alignment import cosine_matrix
    from worker.engine.proxy.align import eager_attention, target_signals
    from worker.engine.proxy.compress import factor_modules
    from worker.engine.proxy.gram import proxy_gram, target_gram
    from worker.engine.proxy.lm import sequence_losses

    target = make_target("llama")
    target.model.double()
    proxy = build_proxy(target, records, ProxyConfig(sparsity=0.5, **FAST)).model.double()
    layers = factor_modules(proxy)
    batch = collate(encode_all(records[:3], target.tokenizer, 64), pad_token_id(target.tokenizer))
    params = [t for m in layers.values() for t in (m.A, m.B)]
    weights: list[torch.Tensor] = [target.model.get_submodule(n).weight for n in layers]  # type: ignore[misc]

    def per_sample(model: torch.nn.Module, ps: Sequence[torch.Tensor]) -> torch.Tensor:
        out = []
        for i in range(3):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            logits = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits
            g = torch.autograd.grad(sequence_losses(logits, one["labels"]).sum(), ps)
            out.append(torch.cat([x.flatten() for x in g]))
        G = torch.stack(out)
        return cosine_matrix(G @ G.T)

    with eager_attention(proxy), eager_attention(target.model):
        for w in weights:
            w.requires_grad_(True)
        want_t = per_sample(target.model, weights)
        for w in weights:
            w.requires_grad_(False)
        want_p = per_sample(proxy, params)
        _, t_cos, t_grads = target_gram(target.model, list(layers), batch)
        _, p_cos, p_grads = proxy_gram(proxy, layers, batch)
        _, ref_grads, _ = target_signals(target.model, list(layers), batch)
        logits = proxy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref_p = torch.autograd.grad(sequence_losses(logits, batch["labels"]).mean(), params)
    torch.testing.assert_close(t_cos.double(), want_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p_cos.double(), want_p, rtol=1e-5, atol=1e-6)
    for a, b in zip(t_grads, ref_grads, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-6, atol=1e-9)
    for a, b in zip(p_grads, ref_p, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-6, atol=1e-9)


def test_gram_steps_lower_the_gram_term(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    fast = {k: v for k, v in FAST.items() if k != "align_steps"}
    config = ProxyConfig(
        sparsity=0.5,
        gram_weight=1.0,
        ga_weight=0.0,
        kl_weight=0.0,
        lr=1e-3,
        max_grad_norm=0.0,
        align_steps=6,
        align_samples=4,  # one batch: every step sees the same four records
        align_batch_size=4,
        **fast,
    )
    proxy = build_proxy(target, records, config)
    first, last = proxy.manifest["alignment"]["first"], proxy.manifest["alignment"]["last"]
    assert last["gram"] < 0.5 * first["gram"]
    with pytest.raises(ConfigError, match="gram_weight"):
        ProxyConfig(gram_weight=1.0, align_hvp="finite")


def test_an_alignment_step_out_of_memory_splits_its_passes(
    make_target: Callable[..., LoadedModel],
    records: list[Record],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of memory on the whole batch: the step's passes run a row at a time and give the
    gradient of the whole batch (the finite-difference route accumulates exactly)."""
    from worker.engine.proxy import align as align_module

    target = make_target("llama")
    target.model.double()
    proxy = build_proxy(target, records, ProxyConfig(sparsity=0.5, **FAST)).model.double()
    params = [p for p in proxy.parameters() if p.requires_grad]
    batch = collate(encode_all(records[:4], target.tokenizer, 64), pad_token_id(target.tokenizer))
    config = ProxyConfig(kl_weight=0.1)
    with align_module.eager_attention(proxy):
        want_losses = align_module.finite_difference_gradients(target.model, proxy, batch, config)
        want = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
        original = align_module.forward_logits

        def small_only(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
            if b["input_ids"].shape[0] > 1:
                raise torch.OutOfMemoryError("simulated: the batch does not fit")
            return original(model, b)

        monkeypatch.setattr(align_module, "forward_logits", small_only)
        losses, rows = align_module.step_gradients(target.model, proxy, batch, config, params)
        got = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
    assert rows == 1
    assert float(losses.ga) == pytest.approx(float(want_losses.ga), abs=1e-9)
    assert float(losses.kl) == pytest.approx(float(want_losses.kl), rel=1e-5)  # float32 KL
    cos = float(torch.nn.functional.cosine_similarity(got, want, dim=0))
    assert cos > 0.9999
    # a single row that does not fit is the error itself
    one = {k: v[:1] for k, v in batch.items()}
    monkeypatch.setattr(
        align_module,
        "forward_logits",
        lambda m, b: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")),
    )
    with pytest.raises(torch.OutOfMemoryError):
        align_module.step_gradients(target.model, proxy, one, config, params)


def test_per_record_alignment_is_the_mean_of_each_records_own_objective(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    """``ga_unit: sample``: the step's gradient and losses are the means over the batch's
    records of each record's objective on its own (unpadded) sequence, not the batch-mean
    objective's; gram matching, which compares records, refuses it."""
    from worker.engine.proxy import align as align_module

    target = make_target("llama")
    target.model.double()
    proxy = build_proxy(target, records, ProxyConfig(sparsity=0.5, **FAST)).model.double()
    params = [p for p in proxy.parameters() if p.requires_grad]
    examples = encode_all(records[:3], target.tokenizer, 64)
    pad = pad_token_id(target.tokenizer)
    assert len({len(e.input_ids) for e in examples}) > 1  # the batch is padded
    batch = collate(examples, pad)
    per_record = ProxyConfig(kl_weight=0.1, ga_unit="sample")

    def flat() -> torch.Tensor:
        out = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
        for p in params:
            p.grad = None
        return out

    with align_module.eager_attention(proxy), align_module.eager_attention(target.model):
        want, ga, kl = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64), 0.0, 0.0
        for e in examples:
            one = align_module.alignment_losses(
                target.model, proxy, collate([e], pad), per_record, create_graph=True
            )
            one.total.backward()  # type: ignore[no-untyped-call]
            want += flat() / 3
            ga, kl = ga + float(one.ga.detach()) / 3, kl + float(one.kl.detach()) / 3
        losses, rows = align_module.step_gradients(target.model, proxy, batch, per_record, params)
        got = flat()
        align_module.step_gradients(target.model, proxy, batch, ProxyConfig(kl_weight=0.1), params)
        batch_mean = flat()
    assert rows == 1
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)
    assert float(losses.ga) == pytest.approx(ga, rel=1e-9)
    assert float(losses.kl) == pytest.approx(kl, rel=1e-6)
    assert len(losses.cosines) == len(params) // 2
    cos = float(torch.nn.functional.cosine_similarity(got, batch_mean, dim=0))
    assert cos < 0.99  # a different objective from the batch-mean one
    with pytest.raises(ConfigError, match="gram_weight"):
        ProxyConfig(gram_weight=1.0, ga_unit="sample")


def _output_gradients(
    model: torch.nn.Module, names: list[str], batch: dict[str, torch.Tensor]
) -> list[torch.Tensor]:
    """Each named module's ``dL/dy`` by ``retain_grad`` on its output, the batch-mean response
    loss's (an independent route from the alignment code's)."""
    from worker.engine.proxy.lm import forward_logits, sequence_losses

    outs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> None:
            out.retain_grad()
            outs[name] = out

        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        with torch.enable_grad():
            model.get_input_embeddings().weight.requires_grad_(True)  # type: ignore[operator]
            sequence_losses(forward_logits(model, batch), batch["labels"]).mean().backward()
    finally:
        model.get_input_embeddings().weight.requires_grad_(False)  # type: ignore[operator]
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    return [outs[n].grad.detach() for n in names]  # type: ignore[union-attr]


def test_output_gradient_matching_measures_and_reduces_the_per_token_error(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    """``delta_weight``: ``L_delta`` is each compressed layer's per-record 1 - cos of the
    proxy's per-token output gradients against the target's (checked against ``retain_grad``
    on both models), and steps on it alone reduce it."""
    from worker.engine.math.alignment import output_gradient_error
    from worker.engine.proxy import align as align_module

    target = make_target("llama")
    target.model.double()
    proxy = build_proxy(target, records, ProxyConfig(sparsity=0.5, **FAST)).model.double()
    names = list(_factors(proxy))
    examples = encode_all(records[:4], target.tokenizer, 64)
    batch = collate(examples, pad_token_id(target.tokenizer))
    config = ProxyConfig(ga_weight=0.0, kl_weight=0.0, delta_weight=1.0)
    with align_module.eager_attention(proxy), align_module.eager_attention(target.model):
        got = align_module.alignment_losses(target.model, proxy, batch, config, create_graph=False)
        want = output_gradient_error(
            _output_gradients(proxy, names, batch), _output_gradients(target.model, names, batch)
        )
        assert got.delta is not None and float(got.delta) > 1e-3
        assert float(got.delta) == pytest.approx(float(want), rel=1e-9)
        assert float(got.total.detach()) == pytest.approx(float(got.delta), rel=1e-12)
    history = align_module.align(
        target.model,
        proxy,
        examples,
        ProxyConfig(
            ga_weight=0.0,
            kl_weight=0.0,
            delta_weight=1.0,
            align_steps=12,
            distill_steps=0,
            align_batch_size=4,
            lr=1e-3,
            lr_schedule="constant",
        ),
        pad_id=pad_token_id(target.tokenizer),
    )
    assert len(history) == 12 and all("delta" in h for h in history)
    assert history[-1]["delta"] < 0.75 * history[0]["delta"]
    for bad in ({"align_hvp": "finite"}, {"gram_weight": 1.0}):
        with pytest.raises(ConfigError, match="delta_weight"):
            ProxyConfig(delta_weight=1.0, **bad)
