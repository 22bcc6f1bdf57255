"""Replace a model's chosen linear layers by low-rank factors (IPSVD, SVD or random).

The proxy is a deep copy of the target: embeddings, norms, the LM head and every layer that
stays dense are the target's tensors, unchanged. Only the factors ``A``/``B`` of compressed
layers require gradients afterwards (they are what alignment trains and what a scorer
differentiates).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from worker.engine.lowrank import LowRankLinear, parameter_count
from worker.engine.math.ranks import factor_parameters, rank_for_sparsity
from worker.engine.progress import ProgressFn, StopFn, check_stop, report
from worker.engine.proxy.config import ProxyConfig
from worker.engine.proxy.methods import method_entry
from worker.engine.proxy.probes import Probes


def layer_ranks(layers: Mapping[str, nn.Linear], config: ProxyConfig) -> dict[str, int | None]:
    """Rank of each layer from the config's sparsity (``None``: the layer stays dense)."""
    return {
        name: rank_for_sparsity(
            mod.out_features, mod.in_features, config.sparsity, config.rank_multiple
        )
        for name, mod in layers.items()
    }


def factorise(
    W: torch.Tensor,
    rank: int,
    config: ProxyConfig,
    probes: tuple[torch.Tensor, torch.Tensor] | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """Factors ``A: (out, r)``, ``B: (r, in)`` of ``W: (out, in)`` by the config's method, and
    the relative influence-weighted error they leave (IPSVD only, else ``None``)."""
    # The method's registry entry does the work (worker/engine/proxy/methods.py).
    return method_entry(config.method).factorise(W, rank, config, probes, generator)


def replace_layer(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def compress(
    target: nn.Module,
    layers: Mapping[str, nn.Linear],
    config: ProxyConfig,
    probes: Probes | None,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A compressed deep copy of ``target`` and one report per layer.

    ``layers`` are the target's modules (named as in ``target``). Probe tensors are consumed
    (popped) layer by layer so their memory goes as the proxy grows.
    """
    proxy = copy.deepcopy(target)
    for p in proxy.parameters():
        p.requires_grad_(False)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)  # same draws everywhere
    ranks = layer_ranks(layers, config)
    reports: list[dict[str, Any]] = []
    for i, (name, mod) in enumerate(layers.items()):
        check_stop(should_stop, "compressing")
        out_f, in_f = mod.out_features, mod.in_features
        bias = mod.bias.numel() if mod.bias is not None else 0
        rank = ranks[name]
        entry: dict[str, Any] = {
            "name": name,
            "out_features": out_f,
            "in_features": in_f,
            "bias": mod.bias is not None,
            "rank": rank,
            "target_params": out_f * in_f + bias,
        }
        pair = None
        if probes is not None:
            pair = (probes.inputs.pop(name), probes.grads.pop(name))
        if rank is None:
            entry.update(kind="dense", proxy_params=entry["target_params"], weighted_error=None)
        else:
            W = mod.weight.detach()
            A, B, error = factorise(W, rank, config, pair, generator)
            # Contiguous factors: a loaded proxy has them so, and matmul kernels pick their path
            # by memory layout; equal strides are what makes save/load bit-exact.
            bias_t = mod.bias.detach() if mod.bias is not None else None
            layer = LowRankLinear(A.contiguous(), B.contiguous(), bias_t)
            if layer.bias is not None:
                layer.bias.requires_grad_(False)
            replace_layer(proxy, name, layer)
            entry.update(
                kind="lowrank",
                proxy_params=factor_parameters(out_f, in_f, rank) + bias,
                # Diagnostic: the relative influence-weighted error the factors leave.
                weighted_error=error,
            )
        reports.append(entry)
        report(progress, "compressing", i + 1, len(layers))
    proxy.eval()
    return proxy, reports


def factor_modules(model: nn.Module) -> dict[str, LowRankLinear]:
    """The ``LowRankLinear`` modules of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def parameter_summary(target: nn.Module, proxy: nn.Module) -> dict[str, int]:
    """Total parameters of both models (tied tensors once) and of the factors alone."""
    factors = sum(m.A.numel() + m.B.numel() for m in factor_modules(proxy).values())
    return {
        "target_params": parameter_count(target),
        "proxy_params": parameter_count(proxy),
        "factor_params": factors,
    }
