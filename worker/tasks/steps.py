"""The stages of a job, as plain functions over job ids (the Celery tasks in ``jobs.py`` are
one-line wrappers, and tests call these directly).

``run_job`` plans: it builds (or reuses) the proxy (``proxies.py``), counts the pool and splits it into shards,
then queues one ``score_shard`` per shard. Each shard upserts its scores batch by batch and
stops at the next batch once the job is being cancelled. The shard that settles last (counted
under the job row's lock) queues ``rank_job``, which writes the subset and finishes the job.
A job whose scorer needs the whole pool (its registry entry says so: ``influence``, whose scores
use the curvature ``G^T G / n`` of the whole pool, which separate shards would each estimate from
their own slice) is one shard.
Every step is safe to run twice: a redelivered message finds its work done or overwrites it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis.exceptions as redis_exc
from celery.exceptions import SoftTimeLimitExceeded
from kombu import exceptions as kombu_exc
from sqlalchemy import exc as sa_exc

from service.artifacts import sha256_file
from service.config import Settings
from service.db import session_scope
from service.jobs import repository as repo
from service.jobs import state
from service.jobs.kinds import kind_entry
from service.jobs.service import subset_parts
from service.links import proxy_result_links, select_result_links
from service.models import Job, JobStage, JobStatus, ShardStatus
from service.models.base import utcnow
from service.proxies import repository as proxy_repo
from service.queue import TASK_RANK_JOB, TASK_SCORE_SHARD
from worker.engine.errors import Cancelled, DataFormatError, EmptyDatasetError, EngineError
from worker.tasks.configs import named_errors, proxy_config, score_config, selection_config
from worker.tasks.inputs import local_input
from worker.tasks.proxies import ensure_proxy, fidelity_summary, local_proxy
from worker.tasks.reporting import Reporter, observe_stage
from worker.tasks.runtime import model_cache, worker_runtime
from worker.tasks.warmup import WARMUP_DIR, ensure_warmup

log = logging.getLogger(__name__)

Enqueue = Callable[..., None]
"""``enqueue(task_name, *args)``: Celery's send_task in production, a direct call in tests."""


@dataclass(frozen=True)
class Inputs:
    model: str
    pool: Path
    targets: list[Path]


def job_dir(settings: Settings, job_id: str) -> Path:
    """The job's local folder: downloaded inputs, gradient stores, the subset before upload."""
    return settings.artifacts.workspace("jobs", job_id)


def _inputs(request: dict[str, Any], job_id: str, settings: Settings) -> Inputs:
    folder = job_dir(settings, job_id)
    targets = request.get("target_uri") or []
    targets = [targets] if isinstance(targets, str) else targets
    return Inputs(
        model=request["resolved"]["target_model"],
        pool=local_input(request["dataset_uri"], "dataset_uri", folder, settings),
        targets=[local_input(u, "target_uri", folder, settings) for u in targets],
    )


def is_transient(exc: BaseException) -> bool:
    """An outage rather than a fault of the job: the database or the broker unreachable, or
    no pooled connection free. Such a step is retried, never failed."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc,
        (
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.TimeoutError,
            kombu_exc.OperationalError,
            redis_exc.ConnectionError,
            redis_exc.TimeoutError,
        ),
    )


@contextmanager
def job_guard(job_id: str) -> Iterator[None]:
    """Whatever escapes a step ends the job: cancelled, or failed with a code; never running.
    Transient errors (is_transient) pass through for the task to retry, even when they strike
    while the failure is being recorded."""
    try:
        yield
    except Cancelled:
        with session_scope() as s:
            state.cancelled(s, job_id, {"scored": repo.count_scores(s, job_id)})
    except EngineError as exc:
        log.info("job %s failed: [%s] %s", job_id, exc.code, exc.message)
        with session_scope() as s:
            state.fail(s, job_id, exc.code, exc.message)
    except SoftTimeLimitExceeded:
        with session_scope() as s:
            state.fail(s, job_id, "time_limit", "the task ran past its time limit")
    except Exception as exc:
        if is_transient(exc):
            raise
        if _out_of_memory(exc):
            log.warning("job %s ran out of device memory: %s", job_id, exc)
            with session_scope() as s:
                state.fail(
                    s,
                    job_id,
                    "out_of_memory",
                    "the worker's device ran out of memory at the job's batch size (lower "
                    f"proxy.batch_size or scorer.batch_size, or max_length): {exc}"[:2000],
                )
            return
        log.exception("job %s failed unexpectedly", job_id)
        with session_scope() as s:
            state.fail(s, job_id, "internal", f"{type(exc).__name__}: {exc}")


def _out_of_memory(exc: BaseException) -> bool:
    """torch's device out-of-memory error (the worker has torch loaded by then)."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def _pick(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: d[k] for k in keys if k in d}


def _snapshot(job: Job) -> dict[str, Any]:
    return {"id": job.id, "tenant_id": job.tenant_id, "kind": job.kind, "request": job.request}


def run_job(job_id: str, settings: Settings, enqueue: Enqueue) -> None:
    """First step of every job: build or reuse the proxy; for ``select``, plan the shards."""
    with session_scope() as s:
        row = state.start(s, job_id)
        if row is None:
            return
        job = _snapshot(row)
        proxy_id = row.proxy_id
    inputs = _inputs(job["request"], job_id, settings)
    if not kind_entry(job["kind"]).scores:  # the proxy is the job's result
        proxy = ensure_proxy(job, inputs.model, inputs.pool, settings, inputs.targets)
        result: dict[str, Any] = {
            "proxy_id": proxy.id,
            "links": proxy_result_links(proxy.id),
            "fidelity": fidelity_summary(proxy.manifest),
        }
        with session_scope() as s:
            state.succeed(
                s, job_id, result | _pick(proxy.manifest, ("proxy_params", "target_params"))
            )
        return
    if job["request"].get("warmup"):
        # The paper's recipe: warm up, then a proxy per checkpoint, built while scoring (one
        # shard, so that each checkpoint's proxy is built once).
        ensure_warmup(
            job_id, job["request"], inputs.model, inputs.pool, job_dir(settings, job_id), settings
        )
        _plan_shards(job_id, inputs.pool, settings, enqueue, whole_pool=True)
        return
    if proxy_id is None:
        proxy_id = ensure_proxy(job, inputs.model, inputs.pool, settings, inputs.targets).id
        with session_scope() as s:
            state.attach_proxy(s, job_id, proxy_id)
    from worker.engine.scoring.registry import scorer_entry

    config = score_config(job["request"].get("scorer") or {})
    whole = scorer_entry(config.scorer).whole_pool
    _plan_shards(job_id, inputs.pool, settings, enqueue, whole_pool=whole)


def _plan_shards(
    job_id: str, pool: Path, settings: Settings, enqueue: Enqueue, *, whole_pool: bool = False
) -> None:
    from worker.engine.data import iter_records

    with session_scope() as s:
        job = repo.get_job_any_tenant(s, job_id)
        if job is not None and job.stage is JobStage.RANKING:
            return  # a redelivered plan after the shards finished: nothing left to plan
        if not state.set_stage(s, job_id, JobStage.SCORING):
            return
    from worker.engine.scoring.output import check_fields

    # Streams the whole pool once: a corrupt record, or one with a field the subset would
    # overwrite (rank, score), fails the job here, before any scoring.
    size = 0
    for rec in iter_records(pool):
        check_fields(rec.fields, rec.index, rec.id)
        size += 1
    if size == 0:
        raise EmptyDatasetError(f"{pool.name}: holds no records")
    step = size if whole_pool else settings.shard_size
    bounds = [(a, min(a + step, size)) for a in range(0, size, step)]
    with session_scope() as s:
        pending = state.plan_shards(s, job_id, bounds, size)
    for k in pending:
        enqueue(TASK_SCORE_SHARD, job_id, k)


def score_shard(
    job_id: str,
    shard_index: int,
    settings: Settings,
    enqueue: Enqueue,
    claim: str | None = None,
) -> None:
    """Score one slice of the pool, persisting each batch; stop early when cancelled.

    ``claim`` names this delivery (the Celery task id, which a retry keeps): the shard is
    claimed under it, its heartbeat beaten every batch, and the work stops at the next batch
    if the reconciler gave the shard to another delivery meanwhile."""
    from worker.engine.pipeline import iter_scores

    claim = claim or uuid.uuid4().hex
    stale_before = utcnow() - timedelta(seconds=settings.shard_stale_after_s)
    with session_scope() as s:
        outcome = state.claim_shard(s, job_id, shard_index, claim, stale_before)
        if outcome is None:
            return
        row = repo.get_job_any_tenant(s, job_id)
        shard = repo.get_shard(s, job_id, shard_index)
        assert row is not None and shard is not None  # claim_shard saw both under the lock
        job = _snapshot(row)
        proxy = proxy_repo.get_proxy_any_tenant(s, row.proxy_id) if row.proxy_id else None
        saved = (proxy.id, proxy.path, proxy.sha256) if proxy is not None else None
        start, stop = shard.start, shard.stop
    if outcome is ShardStatus.PENDING:
        inputs = _inputs(job["request"], job_id, settings)
        proxy_path = local_proxy(*saved, settings) if saved is not None else None
        reporter = Reporter(job_id, stages=False, interval_s=5.0, shard=(shard_index, claim))
        outcome = ShardStatus.DONE
        config = score_config(job["request"].get("scorer") or {})
        # One store per shard: the store's manifest and shard names are not safe for two
        # writers, and a redelivered shard resumes from its own store. Exact scores have no
        # features to store.
        store = job_dir(settings, job_id) / "store" / f"shard-{shard_index:05d}"
        request = job["request"]
        warm = job_dir(settings, job_id) / WARMUP_DIR if request.get("warmup") else None
        batches = iter_scores(
            inputs.model,
            inputs.pool,
            inputs.targets,
            proxy=proxy_config(request.get("proxy") or {}) if warm is not None else proxy_path,
            checkpoints=warm,
            adam=bool((request.get("scorer") or {}).get("adam")),
            config=config,
            store_dir=store if config.features == "projected" else None,
            indices=range(start, stop),
            progress=reporter.progress,
            runtime=worker_runtime(settings),
            models=model_cache(settings),
            events=reporter.event,
        )
        batches = named_errors("scorer", batches)  # name a ConfigError as the request does
        for batch in batches:
            with session_scope() as s:
                if not state.beat_shard(s, job_id, shard_index, claim):
                    log.info("job %s shard %d: claim taken over; stopping", job_id, shard_index)
                    return
                rows = list(zip(batch.indices, batch.ids, batch.scores, strict=True))
                status = state.record_scores(s, job_id, rows)
            if status is not JobStatus.RUNNING:
                outcome = ShardStatus.STOPPED
                break
        reporter.close()
    _settle_shard(job_id, shard_index, outcome, enqueue, claim)


def _settle_shard(
    job_id: str, shard_index: int, outcome: ShardStatus, enqueue: Enqueue, claim: str
) -> None:
    """Record the shard's end (:func:`state.settle_shard`); the last shard to settle queues
    the ranking."""
    with session_scope() as s:
        rank = state.settle_shard(s, job_id, shard_index, outcome, claim)
    if rank:
        enqueue(TASK_RANK_JOB, job_id)


def _write_subset(job_id: str, ranked: list[Any], settings: Settings) -> list[str]:
    """Write and publish the subset as JSONL and Parquet (before the job says it succeeded);
    returns the formats written. Each file is written under a name of its own delivery (a
    ranking re-queued by the reconciler may overlap a slow one) and renamed when whole. A
    selection whose fields have no single Parquet type each is served as JSONL only."""
    from worker.engine.scoring.output import write_selection

    formats = []
    for fmt in ("jsonl", "parquet"):
        out = settings.artifacts.workspace(*subset_parts(job_id, fmt))
        tmp = out.with_name(f"{out.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            write_selection(tmp, ranked, fmt)
        except DataFormatError as exc:
            if fmt == "jsonl":
                raise
            with session_scope() as s:
                state.metric(s, job_id, "no parquet subset", {"reason": exc.message})
            continue
        os.replace(tmp, out)
        settings.artifacts.publish(*subset_parts(job_id, fmt))
        formats.append(fmt)
    return formats


def _calibrate(
    job_id: str,
    request: dict[str, Any],
    inputs: Inputs,
    samples: int,
    settings: Settings,
    ranking_s: float,
) -> dict[str, Any] | None:
    """Record the job's rates for later estimates; its estimate vs actual (None if they could
    not be measured: a failure here never fails the job). Tokens are counted with the model's
    tokenizer only when this worker holds the model already (no model is loaded for this)."""
    from worker.tasks import calibrate

    try:
        runtime = worker_runtime(settings)
        cache = model_cache(settings)
        loaded = cache.peek(inputs.model, runtime) if cache is not None else None
        if loaded is None:
            log.info("job %s: model not loaded here; no calibration recorded", job_id)
            return None
        tokenizer = loaded.tokenizer
        return calibrate.record(
            job_id, request, inputs.pool, samples, tokenizer, runtime.describe(), ranking_s
        )
    except Exception as exc:
        if is_transient(exc):
            raise
        log.warning("job %s: no calibration recorded: %s", job_id, exc)
        return None


def rank_job(job_id: str, settings: Settings) -> None:
    """Rank every score, write the subset file, finish the job."""
    from worker.engine.pipeline import rank, token_counts

    with session_scope() as s:
        row = repo.get_job_any_tenant(s, job_id)
        if row is None or row.status.is_terminal():
            return
        if row.status is JobStatus.CANCELLING:
            state.cancelled(s, job_id, {"scored": repo.count_scores(s, job_id)})
            return
        state.set_stage(s, job_id, JobStage.RANKING)
        job = _snapshot(row)
        proxy_id, pool_size = row.proxy_id, row.progress_total
        scores = repo.all_scores(s, job_id)
        proxy = proxy_repo.get_proxy_any_tenant(s, proxy_id) if proxy_id else None
        fidelity = fidelity_summary(proxy.manifest) if proxy is not None else None
    request = job["request"]
    ranking_started = time.perf_counter()
    inputs = _inputs(request, job_id, settings)
    selection = selection_config(request["selection"])
    counts = None
    if selection.token_budget is not None:
        from worker.engine.pipeline import ModelCache

        models = model_cache(settings) or ModelCache()
        tokenizer = models.get(inputs.model, worker_runtime(settings)).tokenizer
        counts = token_counts(
            tokenizer, inputs.pool, score_config(request.get("scorer") or {}).max_length
        )
    ranked = rank(inputs.pool, scores, selection, token_counts=counts)
    out = settings.artifacts.workspace(*subset_parts(job_id))
    formats = _write_subset(job_id, ranked, settings)
    result = {
        "pool_size": pool_size,
        "scored": len(scores),
        "selected": len(ranked),
        "proxy_id": proxy_id,
        "selection": selection.to_dict(),
        "fidelity": fidelity,
        "subset_sha256": sha256_file(out),
        "subset_formats": formats,
        "links": select_result_links(job_id, proxy_id),
    }
    result["estimate_vs_actual"] = _calibrate(
        job_id, request, inputs, len(scores), settings, time.perf_counter() - ranking_started
    )
    if request.get("warmup"):
        from worker.engine.train.checkpoints import list_checkpoints

        ckpts = list_checkpoints(job_dir(settings, job_id) / WARMUP_DIR)
        result["warmup"] = {
            "checkpoints": [{"step": c.step, "weight": c.mean_lr} for c in ckpts],
            "adam": bool((request.get("scorer") or {}).get("adam")),
        }
    # No Reporter runs here (ranking reports no progress), so the stage is timed by hand.
    observe_stage(JobStage.RANKING, time.perf_counter() - ranking_started)
    with session_scope() as s:
        state.succeed(s, job_id, result)
