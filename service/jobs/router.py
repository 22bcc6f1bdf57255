"""HTTP routes of /jobs. Thin: parse, call the service, shape the response.

Each handler opens its session where it needs it and closes it before returning (service/db.py
says why); nothing that waits on the network runs while a session is open.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from service.auth.deps import TenantDep
from service.config import get_settings
from service.db import read_connection, session_scope
from service.errors import Unavailable, ValidationFailed, problem_responses
from service.estimates import service as estimates
from service.estimates.schemas import Estimate
from service.jobs import exports, service, state
from service.jobs.schemas import EventPage, JobCreate, JobPage, JobRead, ScorePage
from service.logs import bind_values
from service.models import JobStatus
from service.pagination import CursorQuery, limit_query
from service.queue import TASK_RUN_JOB, get_dispatcher
from service.text import unstorable

router = APIRouter(prefix="/jobs", tags=["jobs"])

_METADATA_PREFIX = "metadata."

JobIdPath = Annotated[
    str, Path(description="The job's id.", examples=["6c1f6a8e-9a8b-4f57-8f0e-2b1d3c4e5f60"])
]


@router.post(
    "",
    status_code=202,
    response_model=JobRead,
    operation_id="createJob",
    summary="Submit a job",
    response_description="The job, queued; its URL is in the Location header.",
    responses={
        200: {"model": Estimate, "description": "A dry_run's estimate (nothing stored)."},
        **problem_responses(401, 403, 422, 500, 503),
    },
)
def create_job(
    body: JobCreate,
    tenant: TenantDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Replays return the job the first request created; the same key with "
            "another body is a 422.",
            examples=["readme-demo-1"],
        ),
    ] = None,
) -> JobRead | JSONResponse:
    """Check the request (model, dataset and target URIs, budget) and queue the job. Nothing
    is stored when the request is refused. With ``dry_run`` the same checks run and the answer
    is the estimate (200), storing and queueing nothing."""
    settings = get_settings()
    if body.dry_run:
        resolved = service.check_inputs(settings, body)
        with session_scope() as session:
            predicted = estimates.estimate(
                session, settings, body, resolved["target_model"], resolved.get("pool_size")
            )
        return JSONResponse(predicted.model_dump(mode="json"), status_code=200)
    with session_scope() as session:
        replayed = service.replayed_job(session, tenant, body, idempotency_key)
        read = service.read_job(session, replayed) if replayed is not None else None
    if read is None:
        resolved = service.check_inputs(settings, body)  # files and URLs: no session open
        with session_scope() as session:
            job, created = service.create_job(
                session, settings, tenant, body, idempotency_key, resolved
            )
            read = service.read_job(session, job)
        # Committed: the worker must find the row when the message arrives.
        if created:
            try:
                get_dispatcher().enqueue(TASK_RUN_JOB, job.id)
            except Exception as exc:  # the broker is down: the job must not sit queued forever
                with session_scope() as session:
                    state.fail(
                        session, job.id, "broker_unavailable", f"could not queue the job: {exc}"
                    )
                raise Unavailable(f"the job queue is unreachable ({type(exc).__name__})") from exc
    bind_values(job_id=read.id)
    response.headers["Location"] = f"/jobs/{read.id}"
    return read


@router.get(
    "",
    response_model=JobPage,
    operation_id="listJobs",
    summary="List jobs",
    responses=problem_responses(401, 422, 500, 503),
)
def list_jobs(
    request: Request,
    tenant: TenantDep,
    status: Annotated[
        list[JobStatus] | None,
        Query(description="Only jobs in this status; repeat to OR statuses.", examples=["running"]),
    ] = None,
    cursor: CursorQuery = None,
    limit: Annotated[int, limit_query(50)] = 50,
) -> JobPage:
    """The tenant's jobs, newest first. Filter by labels with ``metadata.<key>=<value>``
    query parameters (all must match)."""
    labels = {
        k.removeprefix(_METADATA_PREFIX): v
        for k, v in request.query_params.items()
        if k.startswith(_METADATA_PREFIX)
    }
    if any(not k for k in labels):
        raise ValidationFailed(
            "metadata filters look like metadata.<key>=<value>", field="metadata"
        )
    for key, value in labels.items():
        if reason := unstorable(key):
            raise ValidationFailed(f"a filter key {reason}", field="metadata")
        if reason := unstorable(value):
            raise ValidationFailed(f"the filter {reason}", field=f"{_METADATA_PREFIX}{key}")
    with session_scope() as session:
        return service.list_jobs(
            session, tenant, statuses=status or [], labels=labels, cursor=cursor, limit=limit
        )


@router.get(
    "/{job_id}",
    response_model=JobRead,
    operation_id="getJob",
    summary="Get a job",
    responses=problem_responses(401, 404, 422, 500, 503),
)
def get_job(job_id: JobIdPath, tenant: TenantDep) -> JobRead:
    """The job's status, stage, progress, result or error."""
    # A read needs no transaction: an autocommit connection, one query (the hot path).
    with read_connection() as conn:
        return service.read_job_by_id(conn, tenant, job_id)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobRead,
    operation_id="cancelJob",
    summary="Cancel a job",
    responses=problem_responses(401, 403, 404, 409, 422, 500, 503),
)
def cancel_job(job_id: JobIdPath, tenant: TenantDep) -> JobRead:
    """A queued job is cancelled at once; a running one stops at its next batch."""
    with session_scope() as session:
        return service.read_job(session, service.cancel(session, tenant, job_id))


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    operation_id="listJobEvents",
    summary="List a job's events",
    responses=problem_responses(401, 404, 422, 500, 503),
)
def job_events(
    job_id: JobIdPath,
    tenant: TenantDep,
    cursor: CursorQuery = None,
    limit: Annotated[int, limit_query(200)] = 200,
) -> EventPage:
    """Status changes, stage changes, progress ticks (rate, ETA, stage metrics such as the
    alignment losses) and engine events, oldest first."""
    with session_scope() as session:
        return service.events(session, tenant, job_id, cursor, limit)


_SCORE_MEDIA = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}


@router.get(
    "/{job_id}/scores",
    response_model=ScorePage,
    operation_id="listJobScores",
    summary="List a job's scores",
    responses={
        200: {"content": {m: {} for m in _SCORE_MEDIA.values()}},
        **problem_responses(401, 404, 422, 500, 503),
    },
)
def job_scores(
    job_id: JobIdPath,
    tenant: TenantDep,
    cursor: CursorQuery = None,
    limit: Annotated[int, limit_query(500)] = 500,
    order: Annotated[
        exports.ScoreOrder,
        Query(
            description="index: by pool index; rank: best score first (ties by index), each "
            "item with its rank.",
            examples=["rank"],
        ),
    ] = "index",
    format: Annotated[
        Literal["json", "jsonl", "csv", "parquet"],
        Query(
            description="json: one page (cursor, limit); jsonl, csv, parquet: every score as "
            "one file, streamed.",
            examples=["parquet"],
        ),
    ] = "json",
) -> ScorePage | Response:
    """Every scored sample, by pool index or by rank; ``partial`` says whether scoring
    finished. As a file (``format`` jsonl, csv, parquet) it holds every score."""
    with session_scope() as session:
        if format == "json":
            return service.scores(session, tenant, job_id, cursor, limit, order)
        service.get_job(session, tenant, job_id)  # 404 before anything streams
    rows = exports.score_rows(job_id, order)
    name = f'attachment; filename="scores-{job_id}.{format}"'
    headers = {"Content-Disposition": name}
    if format == "parquet":
        body: Iterator[bytes] = exports.chunks(exports.scores_parquet(rows, order))
    else:
        body = exports.scores_text(rows, format, order)
    return StreamingResponse(body, media_type=_SCORE_MEDIA[format], headers=headers)


def _stream(fh: IO[bytes], top_k: int | None, fmt: str) -> Iterator[bytes]:
    if fmt == "json":
        yield b"["
    with fh:
        for n, line in enumerate(fh):
            if top_k is not None and n >= top_k:
                break
            if fmt == "json":
                yield (b"," if n else b"") + line.rstrip(b"\n")
            else:
                yield line
    if fmt == "json":
        yield b"]"


_SUBSET_MEDIA = {
    "jsonl": "application/x-ndjson",
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
}


@router.get(
    "/{job_id}/subset",
    operation_id="getJobSubset",
    summary="Download the selected subset",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The selected records: JSON lines (format=jsonl), a JSON array "
            "(json) or a Parquet file (parquet).",
            "content": {
                "application/x-ndjson": {
                    "schema": {"type": "string"},
                    "example": '{"id": "math-3", "rank": 1, "score": 0.27}\n',
                },
                "application/json": {
                    "schema": {"type": "array", "items": {"type": "object"}},
                    "example": [{"id": "math-3", "rank": 1, "score": 0.27}],
                },
                "application/vnd.apache.parquet": {
                    "schema": {"type": "string", "format": "binary"}
                },
            },
        },
        **problem_responses(401, 404, 409, 422, 500, 503),
    },
)
def job_subset(
    job_id: JobIdPath,
    tenant: TenantDep,
    top_k: Annotated[
        int | None, Query(ge=1, description="Only the best top_k records.", examples=[8])
    ] = None,
    format: Annotated[
        Literal["jsonl", "json", "parquet"],
        Query(
            description="jsonl: one record per line; json: one list; parquet: one Parquet file "
            "(columns: the records' fields, rank, score).",
            examples=["parquet"],
        ),
    ] = "jsonl",
) -> StreamingResponse:
    """The ranked records, best first: original fields plus ``rank`` and ``score``."""
    stored = "parquet" if format == "parquet" else "jsonl"
    with session_scope() as session:
        location = service.subset_location(session, get_settings(), tenant, job_id, stored)
    fh = service.open_subset(location, job_id)  # a remote store may be slow: no session open
    name = f"subset-{job_id}.{format}"
    if format == "parquet":
        body = exports.chunks(exports.parquet_head(fh, top_k) if top_k is not None else fh)
    else:
        body = _stream(fh, top_k, format)
    return StreamingResponse(
        body,
        media_type=_SUBSET_MEDIA[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
