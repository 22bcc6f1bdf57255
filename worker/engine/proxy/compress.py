"""Replace a model's chosen linear layers by low-rank factors (IPSVD, SVD or random).

Ranks come per layer from the sparsity (``uniform``) or from one budget spread across layers
by their whitened spectra (``global``); factors are balanced (``math/gauge.py``) unless the
config says otherwise.

The proxy is a deep copy of the target: embeddings, norms, the LM head and every layer that
stays dense are the target's tensors, unchanged. Only the factors ``A``/``B`` of compressed
layers require gradients afterwards (they are what alignment trains and what a scorer
differentiates).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from worker.engine.errors import ConfigError
from worker.engine.lowrank import LowRankLinear, parameter_count
from worker.engine.math.gauge import balance_factors, gauge_imbalance
from worker.engine.math.ranks import (
    LayerSpectrum,
    factor_parameters,
    global_ranks,
    official_rank,
    rank_for_sparsity,
)
from worker.engine.progress import ProgressFn, StopFn, check_stop, report
from worker.engine.proxy.config import ProxyConfig
from worker.engine.proxy.methods import method_entry
from worker.engine.proxy.probes import Probes


def layer_ranks(layers: Mapping[str, nn.Linear], config: ProxyConfig) -> dict[str, int | None]:
    """Rank of each layer from the config's sparsity and rank rule, each layer on its own
    (``None``: the layer stays dense)."""
    rule = official_rank if config.rank_rule == "official" else rank_for_sparsity
    return {
        name: rule(mod.out_features, mod.in_features, config.sparsity, config.rank_multiple)
        for name, mod in layers.items()
    }


def layer_spectrum(
    W: torch.Tensor, config: ProxyConfig, probes: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """Singular values (descending) of what the method truncates (the whitened weight for
    ipsvd, ``W`` itself for svd), from the method's registry entry."""
    entry = method_entry(config.method)
    if entry.spectrum is None:
        raise ConfigError(
            f"rank_allocation: global needs a spectrum, which method {config.method} has not",
            field="rank_allocation",
        )
    return entry.spectrum(W, config, probes)


def allocate_ranks(
    layers: Mapping[str, nn.Linear],
    config: ProxyConfig,
    probes: Probes | None,
    *,
    should_stop: StopFn | None = None,
) -> dict[str, int | None]:
    """Each layer's rank by ``config.rank_allocation``.

    ``global`` spends the uniform rule's factor parameters (over the layers it compresses)
    where the whitened spectra say they remove the most relative error, each layer keeping at
    least ``rank_floor`` of its uniform rank; layers the uniform rule keeps dense stay dense.
    """
    uniform = layer_ranks(layers, config)
    if config.rank_allocation == "uniform":
        return uniform
    spectra: dict[str, LayerSpectrum] = {}
    budget = 0
    floors: dict[str, int] = {}
    for name, mod in layers.items():
        rank = uniform[name]
        if rank is None:
            continue
        check_stop(should_stop, "compressing")
        pair = (probes.inputs[name], probes.grads[name]) if probes is not None else None
        s = layer_spectrum(mod.weight.detach(), config, pair)
        spectra[name] = LayerSpectrum(mod.out_features, mod.in_features, s.cpu())
        budget += factor_parameters(mod.out_features, mod.in_features, rank)
        floors[name] = max(1, math.ceil(config.rank_floor * rank))
    chosen = global_ranks(spectra, budget, floors)
    return {name: chosen.get(name) if name in chosen else None for name in layers}


def ranks_by_type(reports: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Chosen ranks summarised per layer type (the name's last component, e.g. ``q_proj``)."""
    out: dict[str, dict[str, Any]] = {}
    for r in reports:
        kind = str(r["name"]).rsplit(".", 1)[-1]
        entry = out.setdefault(kind, {"layers": 0, "dense": 0, "ranks": []})
        entry["layers"] += 1
        if r["rank"] is None:
            entry["dense"] += 1
        else:
            entry["ranks"].append(int(r["rank"]))
    for entry in out.values():
        ranks = entry.pop("ranks")
        entry.update(
            min_rank=min(ranks) if ranks else None,
            mean_rank=round(sum(ranks) / len(ranks), 1) if ranks else None,
            max_rank=max(ranks) if ranks else None,
        )
    return out


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
    ranks = allocate_ranks(layers, config, probes, should_stop=should_stop)
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
            imbalance = gauge_imbalance(A, B)
            if config.balance:
                A, B = balance_factors(A, B)
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
                # |A| / |B| as factorised (balancing makes it 1 per rank component).
                factor_imbalance=imbalance,
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


def balance_proxy(model: nn.Module) -> None:
    """Balance every ``LowRankLinear``'s factors in place (the function is unchanged)."""
    with torch.no_grad():
        for mod in factor_modules(model).values():
            A, B = balance_factors(mod.A, mod.B)
            mod.A.copy_(A)
            mod.B.copy_(B)
