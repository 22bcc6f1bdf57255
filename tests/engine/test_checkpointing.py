"""Activation checkpointing of decoder layers: layers really recompute, and probes, alignment
losses and alignment gradients (double backward included) are what they are without it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.engine.proxy.conftest import loaded, pool
from tests.tiny import ARCHES, Arch
from worker.engine.checkpointing import checkpointed_layers, decoder_layers
from worker.engine.data import collate, encode_all, pad_token_id
from worker.engine.proxy import ProxyConfig, build_proxy
from worker.engine.proxy.align import alignment_losses, eager_attention
from worker.engine.proxy.probes import collect_probes, select_layers

CONFIG = ProxyConfig(probe_samples=8, probe_positions=8, align_steps=0, max_length=48, batch_size=4)


def _count_forwards(module: nn.Module) -> list[int]:
    """Calls of ``module`` (a module inside a decoder layer: the recomputation calls the layer's
    forward directly, and its submodules through their hooks)."""
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("arch", ARCHES)
def test_layers_recompute_and_probes_are_unchanged(arch: Arch) -> None:
    target = loaded(arch)
    model, tok = target.model, target.tokenizer
    assert len(decoder_layers(model)) == 2
    layers = select_layers(model, CONFIG.target_modules)
    examples = encode_all(pool(8), tok, 48)
    calls = _count_forwards(layers[next(iter(layers))])
    kw = dict(pad_id=pad_token_id(tok), positions_per_sequence=8, batch_size=4, seed=0)
    plain = collect_probes(model, layers, examples, **kw)  # type: ignore[arg-type]
    plain_calls = calls[0]
    ckpt = collect_probes(model, layers, examples, checkpointing=True, **kw)  # type: ignore[arg-type]
    assert calls[0] - plain_calls == 2 * plain_calls  # each batch: forward + recomputation
    for name in layers:
        torch.testing.assert_close(ckpt.inputs[name], plain.inputs[name], rtol=0, atol=0)
        torch.testing.assert_close(ckpt.grads[name], plain.grads[name], rtol=1e-6, atol=1e-9)
    assert "forward" not in vars(decoder_layers(model)[0])  # unwrapped afterwards


@pytest.mark.parametrize("arch", ARCHES)
def test_alignment_double_backward_is_unchanged(arch: Arch) -> None:
    target = loaded(arch)
    proxy = build_proxy(target, pool(), CONFIG).model
    batch = collate(encode_all(pool()[:4], target.tokenizer, 48), pad_token_id(target.tokenizer))
    params = [p for p in proxy.parameters() if p.requires_grad]
    first = decoder_layers(proxy)[0]
    calls = _count_forwards(next(m for m in first.modules() if not list(m.children())))
    results = []
    for on in (False, True):
        before = calls[0]
        with (
            eager_attention(proxy),
            checkpointed_layers(proxy, on) as n_proxy,
            checkpointed_layers(target.model, on) as n_target,
        ):
            assert (n_proxy, n_target) == ((2, 2) if on else (0, 0))
            losses = alignment_losses(target.model, proxy, batch, CONFIG, create_graph=True)
            grads = torch.autograd.grad(losses.total, params)
        results.append((losses.total.detach(), grads, calls[0] - before))
    (l0, g0, c0), (l1, g1, c1) = results
    assert c1 > c0  # the proxy's layer ran again during the backward passes
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-7)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_a_proxy_builds_with_checkpointing() -> None:
    target = loaded("qwen2")
    cfg = ProxyConfig(**{**CONFIG.to_dict(), "align_steps": 2, "align_batch_size": 2})
    plain = build_proxy(target, pool(), cfg)
    ckpt = build_proxy(target, pool(), ProxyConfig(**{**cfg.to_dict(), "checkpointing": True}))
    assert ckpt.manifest["config"]["checkpointing"] is True
    for key in ("loss", "ga", "kl"):
        assert ckpt.manifest["alignment"]["last"][key] == pytest.approx(
            plain.manifest["alignment"]["last"][key], rel=1e-4, abs=1e-6
        )
