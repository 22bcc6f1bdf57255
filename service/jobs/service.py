"""The rules of the jobs domain: validate before queueing, idempotency, tenancy, cancellation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import IO, Any

from sqlalchemy import Connection, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.artifacts import open_binary
from service.config import Settings
from service.datasets import check_uri
from service.errors import Conflict, IdempotencyConflict, NotFound, Unavailable, ValidationFailed
from service.estimates import service as estimates
from service.jobs import repository as repo
from service.jobs import state
from service.jobs.kinds import kind_entry
from service.jobs.schemas import (
    STAGE_UNITS,
    ErrorInfo,
    EventPage,
    EventRead,
    JobCreate,
    JobPage,
    JobRead,
    Progress,
    ScorePage,
    ScoreRead,
)
from service.links import job_links
from service.models import Job, JobStatus
from service.pagination import int_position, keyset_position, paginate
from service.proxies import repository as proxy_repo
from service.targets import resolve_target_model
from service.text import unstorable
from service.webhooks import service as webhooks


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


SUBSET_FILE = "subset.jsonl"
SUBSET_FORMATS = ("jsonl", "json", "parquet")
"""What GET /jobs/{id}/subset serves: JSON is made from the JSONL file as it streams."""


def subset_parts(job_id: str, fmt: str = "jsonl") -> tuple[str, ...]:
    """The ranked subset of a job under the artifact root (``jsonl`` or ``parquet``): made and
    published by the worker, read by the API (a path under a folder root, a URL under a URL
    root)."""
    return ("jobs", job_id, SUBSET_FILE if fmt == "jsonl" else f"subset.{fmt}")


def to_read(job: Job | Row[Any], labels: dict[str, str]) -> JobRead:
    """The API's view of a job, from its ORM object or from a Core row of the jobs table."""
    error = (
        ErrorInfo(code=job.error_code, message=job.error_message or "") if job.error_code else None
    )
    return JobRead(
        id=job.id,
        kind=job.kind,
        status=job.status,
        stage=job.stage,
        progress=Progress(
            done=job.progress_done,
            total=job.progress_total,
            unit=STAGE_UNITS.get(job.stage) if job.stage is not None else None,
        ),
        partial=job.partial,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
        error=error,
        result=job.result,
        proxy_id=job.proxy_id,
        metadata=labels,
        request=job.request,
        links=job_links(job.id),
    )


def read_job(session: Session, job: Job) -> JobRead:
    return to_read(job, repo.labels_of(session, [job.id])[job.id])


def read_job_by_id(conn: Connection, tenant_id: str, job_id: str) -> JobRead:
    """GET /jobs/{id}: the same answer as ``read_job(get_job(...))``, in one query."""
    found = repo.read_job_row(conn, tenant_id, job_id) if not unstorable(job_id) else None
    if found is None:
        raise NotFound(f"no job {job_id}")
    return to_read(*found)


def check_inputs(settings: Settings, body: JobCreate) -> dict[str, Any]:
    """Every check of the request that needs no database: its shape, the model, the dataset
    files and URLs (which may wait on the network, so no session may be open). Returns the
    resolved references (and ``pool_size``, an upper bound on the pool's records, when it is
    cheap to know). Raises 422."""
    entry, kind = kind_entry(body.kind), body.kind.value
    if entry.targets and not body.target_uris():
        raise ValidationFailed(f"target_uri is required for a {kind} job", field="target_uri")
    if entry.selection and body.selection is None:
        raise ValidationFailed(f"selection is required for a {kind} job", field="selection")
    if body.warmup is not None and not entry.scores:
        raise ValidationFailed(f"a {kind} job takes no warmup", field="warmup")
    if body.scorer.adam and body.warmup is None:
        raise ValidationFailed(
            "Adam preconditioning uses the warm-up checkpoints' moments; add warmup",
            field="scorer.adam",
        )
    if body.scorer.adam and body.warmup is not None and (body.warmup.lora_rank or 0) > 0:
        # The engine maps a full fine-tune's moments into each proxy's factors; a LoRA
        # run's moments belong to its adapters, which the proxy does not have.
        raise ValidationFailed(
            "Adam preconditioning of a proxy needs a full warm-up (warmup.lora_rank 0); "
            "a LoRA warm-up scores without adam",
            field="scorer.adam",
        )
    if body.warmup is not None and body.proxy.proxy_id is not None:
        raise ValidationFailed(
            "with warmup a proxy is built from each checkpoint; drop proxy.proxy_id",
            field="proxy.proxy_id",
        )
    if not entry.reuses_proxy and body.proxy.proxy_id is not None:
        raise ValidationFailed(
            f"a {kind} job builds a new proxy; drop proxy.proxy_id", field="proxy.proxy_id"
        )
    for field, given, needed in (
        ("target_uri", body.target_uri is not None, entry.targets),
        ("selection", body.selection is not None, entry.selection),
    ):
        if given and not needed:
            raise ValidationFailed(f"a {kind} job takes no {field}", field=field)
    model = resolve_target_model(
        body.target_model,
        presets=settings.presets,
        model_roots=settings.model_roots,
        allowed_models=settings.allowed_models,
    )

    def check(uri: str, field: str) -> int | None:
        return check_uri(
            uri,
            field,
            data_roots=settings.data_roots,
            http_max_bytes=settings.http_max_bytes,
            http_timeout_s=settings.http_timeout_s,
            http_total_timeout_s=settings.http_total_timeout_s,
            outbound=settings.outbound,
        )

    pool_size = check(body.dataset_uri, "dataset_uri")
    top_k = body.selection.top_k if body.selection is not None else None
    if top_k is not None and pool_size is not None and top_k > pool_size:
        raise ValidationFailed(
            f"top_k is {top_k} but the pool holds {pool_size} records", field="selection.top_k"
        )
    for k, uri in enumerate(body.target_uris()):
        check(uri, "target_uri" if isinstance(body.target_uri, str) else f"target_uri.{k}")
    if body.notify is not None:
        webhooks.check_url(body.notify.url, settings.outbound)
    resolved: dict[str, Any] = {"target_model": model}
    if pool_size is not None:
        resolved["pool_size"] = pool_size
    return resolved


def check_proxy(session: Session, tenant_id: str, body: JobCreate, model: str) -> None:
    """A reused proxy must be the tenant's and built from the same model. Raises 422."""
    if body.proxy.proxy_id is None:
        return
    proxy = proxy_repo.get_proxy(session, tenant_id, body.proxy.proxy_id)
    if proxy is None:
        raise ValidationFailed(
            f"no proxy {body.proxy.proxy_id!r} for this API key", field="proxy.proxy_id"
        )
    if proxy.target_model != model:
        raise ValidationFailed(
            f"proxy {proxy.id} was built from {proxy.target_model!r}, not {model!r}",
            field="proxy.proxy_id",
        )


def replayed_job(
    session: Session, tenant_id: str, body: JobCreate, idempotency_key: str | None
) -> Job | None:
    """The job an earlier request with this Idempotency-Key created, if any; the same key
    with another body is a 422."""
    if idempotency_key is None:
        return None
    if not 0 < len(idempotency_key) <= 255 or unstorable(idempotency_key):
        raise ValidationFailed(
            "must be 1 to 255 characters the database can store", field="Idempotency-Key"
        )
    existing = repo.find_by_idempotency_key(session, tenant_id, idempotency_key)
    return _replay(existing, request_hash(body)) if existing is not None else None


def create_job(
    session: Session,
    settings: Settings,
    tenant_id: str,
    body: JobCreate,
    idempotency_key: str | None,
    resolved: dict[str, Any],
) -> tuple[Job, bool]:
    """Insert a queued job whose inputs :func:`check_inputs` passed; returns (job, created).
    A replayed key returns the original job (created False)."""
    check_proxy(session, tenant_id, body, resolved["target_model"])
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = replayed_job(session, tenant_id, body, idempotency_key)
        if existing is not None:  # a request with the key won while this one was checking
            return existing, False
    if body.notify is not None:
        webhooks.ensure_secret(session, tenant_id)  # deliveries are signed with it
    # The prediction goes with the job; its result compares it with what was measured.
    predicted = estimates.estimate(
        session, settings, body, resolved["target_model"], resolved.get("pool_size")
    )
    request = body.model_dump(mode="json") | {
        "resolved": resolved,
        "estimate": predicted.model_dump(mode="json"),
    }
    job = Job(
        tenant_id=tenant_id,
        kind=body.kind,
        status=JobStatus.QUEUED,
        request=request,
        request_hash=digest,
        idempotency_key=idempotency_key,
        proxy_id=body.proxy.proxy_id,
    )
    try:
        with session.begin_nested():
            repo.add_job(session, job, body.metadata)
            repo.add_event(session, job.id, "status", "queued")
    except IntegrityError:
        # Two requests with one key raced; the other insert won.
        if idempotency_key is None:
            raise
        existing = repo.find_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is None:
            raise
        return _replay(existing, digest), False
    return job, True


def _replay(existing: Job, digest: str) -> Job:
    if existing.request_hash != digest:
        raise IdempotencyConflict(
            f"Idempotency-Key was used for job {existing.id} with a different body",
            field="Idempotency-Key",
        )
    return existing


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job; another tenant's id is indistinguishable from a missing one (and so is
    an id no job can have, such as one holding a NUL)."""
    job = repo.get_job(session, tenant_id, job_id) if not unstorable(job_id) else None
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    statuses: Sequence[JobStatus],
    labels: dict[str, str],
    cursor: str | None,
    limit: int,
) -> JobPage:
    after = keyset_position("jobs", cursor)
    rows = repo.list_jobs(
        session, tenant_id, statuses=statuses, labels=labels, cursor=after, limit=limit + 1
    )
    jobs, nxt, more = paginate("jobs", rows, limit, lambda j: (j.created_at, j.id))
    all_labels = repo.labels_of(session, [j.id for j in jobs])
    items = [to_read(j, all_labels[j.id]) for j in jobs]
    return JobPage(items=items, next_cursor=nxt, has_more=more)


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    return state.request_cancel(session, get_job(session, tenant_id, job_id))


def events(
    session: Session, tenant_id: str, job_id: str, cursor: str | None, limit: int
) -> EventPage:
    after = int_position("events", cursor, first=0)
    get_job(session, tenant_id, job_id)
    rows, nxt, more = paginate(
        "events",
        repo.list_events(session, job_id, after=after, limit=limit + 1),
        limit,
        lambda e: (e.id,),
    )
    items = [
        EventRead(
            id=e.id,
            created_at=e.created_at,
            type=e.type,
            stage=e.stage,
            message=e.message,
            data=e.data,
        )
        for e in rows
    ]
    return EventPage(items=items, next_cursor=nxt, has_more=more)


def scores(
    session: Session,
    tenant_id: str,
    job_id: str,
    cursor: str | None,
    limit: int,
    order: str = "index",
) -> ScorePage:
    """A page of scores by pool index, or in rank order (best first, ties by index; each item
    with its rank). A cursor belongs to its order: one from the other is a 422."""
    job = get_job(session, tenant_id, job_id)
    if order == "rank":
        offset = int_position("scores-rank", cursor, first=0)  # rows the earlier pages held
        fetched = repo.scores_by_rank(session, job_id, offset=offset, limit=limit + 1)
        ranked = list(enumerate(fetched, start=offset + 1))
        page, nxt, more = paginate("scores-rank", ranked, limit, lambda r: (r[0],))
        items = [
            ScoreRead(index=s.sample_index, id=s.sample_id, score=s.score, rank=k) for k, s in page
        ]
    else:
        after = int_position("scores", cursor, first=-1)
        rows, nxt, more = paginate(
            "scores",
            repo.list_scores(session, job_id, after=after, limit=limit + 1),
            limit,
            lambda s: (s.sample_index,),
        )
        items = [ScoreRead(index=s.sample_index, id=s.sample_id, score=s.score) for s in rows]
    partial = job.partial or job.status is not JobStatus.SUCCEEDED
    return ScorePage(
        items=items,
        next_cursor=nxt,
        has_more=more,
        partial=partial,
        count=repo.count_scores(session, job_id),
    )


def subset_location(
    session: Session, settings: Settings, tenant_id: str, job_id: str, fmt: str = "jsonl"
) -> str:
    """Where the job's subset file in ``fmt`` (jsonl or parquet) lies under the artifact root
    (a folder or a URL)."""
    job = get_job(session, tenant_id, job_id)
    if not kind_entry(job.kind).scores:
        raise Conflict(f"job {job_id} is a {job.kind.value} job; it selects nothing")
    if job.status is not JobStatus.SUCCEEDED:
        hint = " (its partial scores are at /scores)" if job.partial else ""
        raise Conflict(f"job {job_id} is {job.status.value}; no subset{hint}")
    written = (job.result or {}).get("subset_formats", ["jsonl"])
    if fmt not in written:
        raise NotFound(
            f"job {job_id} has no {fmt} subset (its records have no single Parquet type per "
            "field, or it finished before Parquet output existed); use format=jsonl"
        )
    return settings.artifacts.location(*subset_parts(job_id, fmt))


def open_subset(location: str, job_id: str) -> IO[bytes]:
    """The subset file at ``location``, open for reading."""
    try:
        return open_binary(location)
    except FileNotFoundError:
        raise NotFound(
            f"the subset file of job {job_id} is missing from the artifact root"
        ) from None
    except OSError as exc:  # a remote store that is down or refuses the credentials
        raise Unavailable(f"the artifact store is unreachable ({type(exc).__name__})") from exc
