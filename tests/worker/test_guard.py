"""Whatever escapes a task step ends the job with a code; it never stays running."""

from __future__ import annotations

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded

from service.auth.keys import get_or_create_tenant
from service.db import session_scope
from service.jobs import state
from service.models import Job, JobKind
from worker.engine.errors import Cancelled, DataFormatError
from worker.tasks import steps


def _running_job(service_db: str) -> str:
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "guard")
        job = Job(tenant_id=tenant.id, kind=JobKind.SELECT, request={}, request_hash="x")
        s.add(job)
        s.flush()
        state.start(s, job.id)
        return job.id


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (DataFormatError("pool.jsonl:3: not valid JSON"), "failed", "data_format"),
        (SoftTimeLimitExceeded(), "failed", "time_limit"),
        (RuntimeError("boom"), "failed", "internal"),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            "failed",
            "out_of_memory",
        ),
        (Cancelled("cancelled during aligning"), "cancelled", None),
    ],
)
def test_guard_ends_the_job(
    service_db: str, exc: BaseException, status: str, code: str | None
) -> None:
    job_id = _running_job(service_db)
    with steps.job_guard(job_id):
        raise exc
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.status.value, job.error_code) == (status, code)
        assert job.finished_at is not None
