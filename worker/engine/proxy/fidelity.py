"""The fidelity report of a built proxy: does it rank data the way its target does?

On a small seeded calibration slice of the pool (``ProxyConfig.fidelity_samples`` records,
disjoint by record id from the probe and alignment records, so nothing the proxy was fitted on
is judged), both the proxy and the full target score every record exactly
(:class:`~worker.engine.scoring.exact.ExactScorer`, TracIn cosine against the mean unit gradient
of a target set, no projection: what ``features: exact`` scoring computes). The target set is the
job's own (a seeded sample of at most ``fidelity_targets`` records) or, without one, that many
more pool records, disjoint from the calibration slice and from the probes and alignment records,
as their own target. The report then gives the Spearman correlation of the two score vectors
(ties averaged), the share of the target's top 10% that the proxy also puts in its top 10%, and
the seconds per calibration sample each model took to score, measured here on this device.

The cost is bounded by the slice sizes: two target-set passes and one calibration pass per model
(about ``2 * (fidelity_targets + fidelity_samples)`` forward+backward passes of the target in
all, plus the same of the proxy), whatever the pool's size. A pool too small for the requested
slices gives smaller ones, with their sizes recorded; one too small for any (fewer than two
calibration records or no target record) gives a ``skipped`` report; an engine error while
scoring (say, out of memory at a batch of one) a ``failed`` one. Neither fails the build:
the report advises, the proxy is the product.
"""

from __future__ import annotations

import random
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from worker.engine.data import Example, Record, collate, encode, pad_token_id
from worker.engine.errors import Cancelled, EngineError, NoResponseTokensError
from worker.engine.math.scores import spearman, top_overlap
from worker.engine.progress import EventFn, ProgressFn, StopFn, check_stop, report
from worker.engine.proxy.config import ProxyConfig
from worker.engine.scoring.config import ScoreConfig
from worker.engine.scoring.exact import ExactScorer, cosine_or_dot
from worker.engine.scoring.features import fitted_batches, length_order, oom_retry

TOP_FRACTION = 0.1
"""The top share whose overlap the report gives (the selection budgets users pick are small)."""

STAGE = "fidelity"
"""The progress stage name of the report (a job shows it as a heartbeat, not a stage)."""

TargetSource = Literal["job", "pool"]


@dataclass(frozen=True)
class FidelitySlices:
    """The records a fidelity report scores.

    ``calibration``: pool records scored by both models; ``targets``: the target set they are
    scored against, from the job (``source == "job"``) or from the pool; ``eligible``: pool
    records that are neither probe nor alignment records; ``skipped``: records drawn but left
    out because truncation left them no response token to take a loss on.
    """

    calibration: list[Example]
    calibration_ids: list[str]
    targets: list[Example]
    target_ids: list[str]
    source: TargetSource
    eligible: int
    skipped: int


def _scorable(record: Record, tokenizer: Any, max_length: int) -> Example | None:
    """``record`` encoded, or ``None`` when no response token is left to take a loss on (the
    first token predicts nothing, so a loss token at position 0 alone does not count)."""
    try:
        ex = encode(record, tokenizer, max_length)
    except NoResponseTokensError:
        return None
    if all(t == -100 for t in ex.labels[1:]):
        return None
    return ex


def _take(
    records: Sequence[Record], order: Sequence[int], want: int, tokenizer: Any, max_length: int
) -> tuple[list[Example], list[str], int, int]:
    """Walk ``records`` in ``order`` encoding until ``want`` are scorable: ``(examples, ids,
    positions used, records skipped)``. Only what is needed is encoded (the pool may be large)."""
    examples: list[Example] = []
    ids: list[str] = []
    used = skipped = 0
    for i in order:
        if len(examples) >= want:
            break
        used += 1
        ex = _scorable(records[i], tokenizer, max_length)
        if ex is None:
            skipped += 1
            continue
        examples.append(ex)
        ids.append(records[i].id)
    return examples, ids, used, skipped


def fidelity_slices(
    records: Sequence[Record],
    tokenizer: Any,
    config: ProxyConfig,
    *,
    exclude_ids: Collection[str],
    targets: Sequence[Record] | None = None,
) -> FidelitySlices:
    """The seeded calibration slice and target set of a report (see the module docstring).

    The pool records whose id is in ``exclude_ids`` (the probe and alignment records) are never
    drawn. The draw depends only on ``config.seed`` and the records, not on the torch RNG. With
    no ``targets``, the pool's own target slice takes at most half of the eligible records, so
    a small pool still gets a calibration slice.
    """
    rng = random.Random(f"iprox-fidelity:{config.seed}")
    excluded = set(exclude_ids)
    eligible = [r for r in records if r.id not in excluded]
    order = rng.sample(range(len(eligible)), len(eligible))
    skipped = 0
    if targets:
        picked = rng.sample(range(len(targets)), len(targets))
        tgt, tgt_ids, _, skip = _take(
            targets, picked, config.fidelity_targets, tokenizer, config.max_length
        )
        skipped += skip
        source: TargetSource = "job"
    else:
        want = min(config.fidelity_targets, len(eligible) // 2)
        tgt, tgt_ids, used, skip = _take(eligible, order, want, tokenizer, config.max_length)
        order = order[used:]
        skipped += skip
        source = "pool"
    cal, cal_ids, _, skip = _take(
        eligible, order, config.fidelity_samples, tokenizer, config.max_length
    )
    skipped += skip
    return FidelitySlices(cal, cal_ids, tgt, tgt_ids, source, len(eligible), skipped)


@dataclass(frozen=True)
class ModelScores:
    """One model's exact scores of the calibration slice (in slice order) and what they cost."""

    scores: torch.Tensor
    target_s: float
    calibration_s: float
    scored_params: int


def exact_calibration_scores(
    model: nn.Module,
    slices: FidelitySlices,
    *,
    layers: Sequence[str],
    batch_size: int,
    pad_id: int,
    label: str,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    events: EventFn | None = None,
) -> ModelScores:
    """Exact TracIn cosine scores ``(n,)`` of ``slices.calibration`` under ``model`` against the
    mean unit gradient of ``slices.targets``; the target set's vector and the calibration pass
    are timed apart. Batches that run out of device memory are halved (an event each)."""
    scorer = ExactScorer(model, layers)
    ordered = length_order(slices.targets)

    def vectors_at(size: int) -> list[torch.Tensor]:
        batches = [collate(ordered[i : i + size], pad_id) for i in range(0, len(ordered), size)]
        return scorer.target_vectors([batches], normalize=True)

    check_stop(should_stop, STAGE)
    report(progress, STAGE, 0, len(slices.calibration))  # a heartbeat before the target set
    t0 = time.perf_counter()
    vectors = oom_retry(batch_size, vectors_at, events)[1]
    if vectors[0].is_cuda:
        torch.cuda.synchronize(vectors[0].device)
    target_s = time.perf_counter() - t0

    def compute(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inner, sq = scorer(batch, vectors)
        return cosine_or_dot(inner, sq, True)[:, 0].cpu()  # .cpu() waits for the device

    # Keyed by object: batches come in length order, the scores go back in slice order.
    by_example: dict[int, float] = {}
    total = len(slices.calibration)
    t0 = time.perf_counter()
    for chunk, scores in fitted_batches(slices.calibration, batch_size, pad_id, compute, events):
        by_example.update(zip((id(e) for e in chunk), scores.tolist(), strict=True))
        report(progress, STAGE, len(by_example), total)
        check_stop(should_stop, f"{STAGE} ({label})")
    calibration_s = time.perf_counter() - t0
    scores = torch.tensor(
        [by_example[id(e)] for e in slices.calibration], dtype=torch.float64, device="cpu"
    )
    params = sum(rows * cols for _, _, (rows, cols) in scorer.blocks)
    return ModelScores(scores, target_s, calibration_s, params)


def _finite(x: float) -> float | None:
    return None if x != x else round(x, 4)  # NaN: a constant score vector has no ranking


def fidelity_report(
    target: nn.Module,
    proxy: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    config: ProxyConfig,
    *,
    exclude_ids: Collection[str],
    targets: Sequence[Record] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    events: EventFn | None = None,
) -> dict[str, Any] | None:
    """The JSON-ready fidelity report of ``proxy`` against ``target`` (module docstring), or
    ``None`` when ``config.fidelity_samples`` is 0. Scores use ``config.max_length`` and
    ``config.batch_size`` and the layers scoring uses by default (``ScoreConfig.layers``).
    ``Cancelled`` (from ``should_stop``) propagates; other engine errors give a ``failed``
    report."""
    if config.fidelity_samples == 0:
        return None
    started = time.perf_counter()
    layers = ScoreConfig().layers
    slices = fidelity_slices(records, tokenizer, config, exclude_ids=exclude_ids, targets=targets)
    out: dict[str, Any] = {
        "status": "measured",
        "reason": None,
        "seed": config.seed,
        "max_length": config.max_length,
        "batch_size": config.batch_size,
        "layers": list(layers),
        "calibration": {
            "requested": config.fidelity_samples,
            "records": len(slices.calibration),
            "tokens": sum(len(e.input_ids) for e in slices.calibration),
            "eligible_pool_records": slices.eligible,
            "record_ids": slices.calibration_ids,
        },
        "targets": {
            "source": slices.source,
            "requested": config.fidelity_targets,
            "available": len(targets) if targets else None,
            "records": len(slices.targets),
            "tokens": sum(len(e.input_ids) for e in slices.targets),
            "record_ids": slices.target_ids,
        },
        "skipped_records": slices.skipped,
        "top_fraction": TOP_FRACTION,
        "top_k": None,
        "spearman": None,
        "top_overlap": None,
        "target": None,
        "proxy": None,
        "speedup": None,
        "seconds": None,
    }
    if len(slices.calibration) < 2 or not slices.targets:
        out["status"] = "skipped"
        out["reason"] = (
            f"too few records: {len(slices.calibration)} calibration record(s) (at least 2 "
            f"needed) and {len(slices.targets)} target record(s) (at least 1) left after "
            "excluding the probe and alignment records and records with no response token"
        )
        out["seconds"] = round(time.perf_counter() - started, 3)
        return out
    pad = pad_token_id(tokenizer)
    common: dict[str, Any] = {
        "layers": layers,
        "batch_size": config.batch_size,
        "pad_id": pad,
        "progress": progress,
        "should_stop": should_stop,
        "events": events,
    }
    try:
        full = exact_calibration_scores(target, slices, label="target", **common)
        small = exact_calibration_scores(proxy, slices, label="proxy", **common)
    except Cancelled:
        raise
    except EngineError as exc:
        out["status"] = "failed"
        out["reason"] = f"[{exc.code}] {exc.message}"
        out["seconds"] = round(time.perf_counter() - started, 3)
        return out
    n = len(slices.calibration)
    for name, s in (("target", full), ("proxy", small)):
        out[name] = {
            "seconds_per_sample": round(s.calibration_s / n, 6),
            "calibration_s": round(s.calibration_s, 3),
            "target_set_s": round(s.target_s, 3),
            "scored_params": s.scored_params,
        }
    out["top_k"] = max(1, round(TOP_FRACTION * n))
    out["spearman"] = _finite(spearman(small.scores, full.scores))
    out["top_overlap"] = round(top_overlap(full.scores, small.scores, TOP_FRACTION), 4)
    if small.calibration_s > 0:
        out["speedup"] = round(full.calibration_s / small.calibration_s, 3)
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def summary_line(report: dict[str, Any] | None) -> str:
    """One readable line of a report (for the CLI and job events)."""
    if report is None:
        return "fidelity: no report (fidelity_samples 0)"
    cal, tgt = report["calibration"], report["targets"]
    source = "the job's" if tgt["source"] == "job" else "from the pool"
    sizes = f"{cal['records']} calibration records vs {tgt['records']} target records ({source})"
    if report["status"] != "measured":
        return f"fidelity {report['status']}: {report['reason']} [{sizes}]"
    spearman_ = report["spearman"]
    rho = "undefined (constant scores)" if spearman_ is None else f"{spearman_:.3f}"
    pct = round(100 * report["top_fraction"])
    t, p = report["target"]["seconds_per_sample"], report["proxy"]["seconds_per_sample"]
    speed = f", {report['speedup']:.2f}x" if report["speedup"] is not None else ""
    return (
        f"fidelity: Spearman {rho}, top-{pct}% overlap {report['top_overlap']:.2f} "
        f"(top {report['top_k']}); seconds per sample: target {t:.4f}, proxy {p:.4f}{speed} "
        f"[{sizes}; {report['seconds']:.1f} s]"
    )


def without_record_ids(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """``report`` without its record ids (summaries; the manifest keeps them)."""
    if report is None:
        return None
    out = dict(report)
    for side in ("calibration", "targets"):
        out[side] = {k: v for k, v in report[side].items() if k != "record_ids"}
    return out
