"""The job-kind registry: every kind has an entry, and the API's rules come from it."""

from __future__ import annotations

from service.jobs.kinds import KINDS, kind_entry
from service.models import JobKind


def test_every_job_kind_has_an_entry() -> None:
    assert set(KINDS) == set(JobKind)
    assert all(kind_entry(k).kind is k for k in JobKind)
