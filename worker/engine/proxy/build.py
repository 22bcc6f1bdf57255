"""``build_proxy``: split the records, probe the target, compress, align, describe the result."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from worker.engine.data import Record, encode_all, pad_token_id
from worker.engine.errors import ConfigError, EmptyDatasetError
from worker.engine.models import LoadedModel
from worker.engine.progress import ProgressFn, StopFn
from worker.engine.proxy.align import align
from worker.engine.proxy.compress import (
    balance_proxy,
    compress,
    parameter_summary,
    ranks_by_type,
)
from worker.engine.proxy.config import ProxyConfig
from worker.engine.proxy.fidelity import fidelity_report
from worker.engine.proxy.methods import method_entry
from worker.engine.proxy.probes import collect_probes, select_layers

MANIFEST_VERSION = 1


@dataclass
class Proxy:
    """A compressed (and possibly aligned) copy of a target model.

    ``model`` is the target architecture with ``LowRankLinear`` in place of compressed layers,
    eval mode, only the factors requiring gradients. ``manifest`` is what ``proxy.json`` holds.
    """

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    config: ProxyConfig
    manifest: dict[str, Any]


def split_records(
    records: Sequence[Record], config: ProxyConfig
) -> tuple[list[Record], list[Record]]:
    """Seeded, disjoint probe and alignment sets drawn from ``records``.

    The alignment set defaults to ``align_fraction`` of the pool (at least one batch), or, when
    the build distils, to a fresh batch per distillation step if that is more (the measured
    recipe: 200 steps on 800 records, docs/benchmarks.md bench:fidelity), but never more than
    half the records left after probing (the rest stays for the fidelity report's calibration
    slice). When the pool is too small for both, the alignment set reuses records from the
    probe set rather than shrinking the probe set (probing is what the factorisation rests on).
    """
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    order = torch.randperm(len(records), generator=generator, device="cpu")
    shuffled = [records[i] for i in order.tolist()]
    probing = method_entry(config.method).needs_probes  # the method's registry entry says
    n_probe = min(config.probe_samples, len(shuffled)) if probing else 0
    n_align = 0
    if config.aligns:
        distilled = min(
            config.distill_steps * config.align_batch_size, (len(records) - n_probe) // 2
        )
        default = max(
            config.align_batch_size, math.ceil(config.align_fraction * len(records)), distilled
        )
        n_align = min(config.align_samples or default, len(shuffled))
    probe = shuffled[:n_probe]
    rest = shuffled[n_probe:]
    aligned = rest[:n_align] if len(rest) >= n_align else (rest + probe)[:n_align]
    return probe, aligned


def library_versions() -> dict[str, str]:
    import safetensors
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }


def build_proxy(
    target: LoadedModel,
    records: Sequence[Record],
    config: ProxyConfig,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    targets: Sequence[Record] | None = None,
) -> Proxy:
    """Compress ``target`` by ``config.method`` at ``config.sparsity`` and align the factors.

    ``records`` is the pool the probe and alignment sets are drawn from (see
    :func:`split_records`). The target model is not modified. Raises ``ConfigError`` when no
    layer matches ``config.target_modules`` and ``EmptyDatasetError`` when the records leave
    nothing to probe or align with.

    The manifest's ``fidelity`` is the report of :mod:`worker.engine.proxy.fidelity` on a
    calibration slice of ``records`` against ``targets`` (the job's target set; ``None``: a
    slice of the pool), absent when ``config.fidelity_samples`` is 0.
    """
    started = time.perf_counter()
    if not records:
        raise EmptyDatasetError("build_proxy: no record to probe or align with")
    model, tok = target.model, target.tokenizer
    layers = select_layers(model, config.target_modules)
    if not layers:
        raise ConfigError(
            "target_modules: no nn.Linear layer of the model ends with any of "
            f"{', '.join(config.target_modules)}"
        )
    pad = pad_token_id(tok)
    probe_records, align_records = split_records(records, config)
    probes = None
    t0 = time.perf_counter()
    if probe_records:
        examples = encode_all(probe_records, tok, config.max_length, on_empty="skip")
        probes = collect_probes(
            model,
            layers,
            examples,
            pad_id=pad,
            positions_per_sequence=config.probe_positions,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
            should_stop=should_stop,
            checkpointing=config.checkpointing,
            all_tokens=config.probe_tokens == "all",
        )
    t_probe = time.perf_counter() - t0
    probe_columns = probes.columns if probes is not None else 0
    t0 = time.perf_counter()
    proxy_model, layer_reports = compress(
        model, layers, config, probes, progress=progress, should_stop=should_stop
    )
    t_factor = time.perf_counter() - t0
    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    if config.aligns:
        length = config.align_max_length or config.max_length
        align_examples = encode_all(align_records, tok, length, on_empty="skip")
        history = align(
            model,
            proxy_model,
            align_examples,
            config,
            pad_id=pad,
            progress=progress,
            should_stop=should_stop,
        )
        if config.balance:
            balance_proxy(proxy_model)  # Adam moved the factors off the balanced gauge
    t_align = time.perf_counter() - t0
    distilled = [h for h in history if h.get("distill")]
    ga_steps = [h for h in history if not h.get("distill")]
    proxy_model.eval()
    counts = parameter_summary(model, proxy_model)
    compressed_target = sum(r["target_params"] for r in layer_reports if r["kind"] == "lowrank")
    compressed_proxy = sum(r["proxy_params"] for r in layer_reports if r["kind"] == "lowrank")
    manifest: dict[str, Any] = {
        "format_version": MANIFEST_VERSION,
        "recipe": config.recipe,
        "method": config.method,
        "sparsity": config.sparsity,
        "rank_allocation": config.rank_allocation,
        "gauge": "balanced" if config.balance else "as factorised",
        **counts,
        "param_ratio": counts["proxy_params"] / counts["target_params"],
        "compressed_layers": sum(1 for r in layer_reports if r["kind"] == "lowrank"),
        "dense_layers": sum(1 for r in layer_reports if r["kind"] == "dense"),
        # Sparsity actually achieved over the layers that were compressed (ranks are floored).
        "achieved_sparsity": 1.0 - compressed_proxy / compressed_target
        if compressed_target
        else 0.0,
        "ranks_by_type": ranks_by_type(layer_reports),
        "layers": layer_reports,
        "target": {"ref": target.ref, "identity": target.identity, "sha256": target.sha256},
        "probe": {
            "records": len(probe_records),
            "record_ids": [r.id for r in probe_records],
            "columns_per_layer": probe_columns,
            "positions_per_sequence": config.probe_positions,
            "ridge": config.ridge,
            "ridge_mode": config.ridge_mode,
            "tokens": config.probe_tokens,
            "oom_halvings": probes.halvings if probes is not None else 0,
        },
        "alignment": {
            "records": len(align_records) if config.aligns else 0,
            "record_ids": [r.id for r in align_records] if config.aligns else [],
            # L_GA steps; the distillation phase before them is counted and summed apart
            "steps": len(ga_steps),
            "first": ga_steps[0] if ga_steps else None,
            "last": ga_steps[-1] if ga_steps else None,
            "distill": {
                "steps": len(distilled),
                "first_kl": distilled[0]["kl"] if distilled else None,
                "last_kl": distilled[-1]["kl"] if distilled else None,
                # the hidden-state term (hidden_weight), where the phase matched states
                **(
                    {"first_hidden": distilled[0]["hidden"], "last_hidden": distilled[-1]["hidden"]}
                    if distilled and "hidden" in distilled[0]
                    else {}
                ),
            },
        },
        "seed": config.seed,
        "config": config.to_dict(),
        "timings_s": {
            "probe": round(t_probe, 3),
            "factorise": round(t_factor, 3),
            "align": round(t_align, 3),
            "total": round(time.perf_counter() - started, 3),
        },
        "versions": library_versions(),
    }
    t0 = time.perf_counter()
    fidelity = fidelity_report(
        model,
        proxy_model,
        tok,
        records,
        config,
        exclude_ids={*manifest["probe"]["record_ids"], *manifest["alignment"]["record_ids"]},
        targets=targets,
        progress=progress,
        should_stop=should_stop,
    )
    if fidelity is not None:
        manifest["fidelity"] = fidelity
        manifest["timings_s"]["fidelity"] = round(time.perf_counter() - t0, 3)
        manifest["timings_s"]["total"] = round(time.perf_counter() - started, 3)
    return Proxy(proxy_model, tok, config, manifest)
