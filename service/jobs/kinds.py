"""The kinds of job, and what each needs and does.

The API's checks (``service.check_inputs``), the subset endpoint and the worker's first step
(``worker/tasks/steps.run_job``) ask an entry instead of matching a kind by name. Adding a kind
means a ``JobKind`` member (an enum stored in the database: a migration), an entry here, and the
worker step that does its work if it is neither of these shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.models import JobKind


@dataclass(frozen=True)
class KindEntry:
    """One kind of job: what its request must hold, and what the worker does with it."""

    kind: JobKind
    summary: str
    targets: bool
    """Its request needs ``target_uri`` (the pool is scored against target tasks); else it
    takes none."""
    selection: bool
    """Its request needs a ``selection`` budget; else it takes none."""
    reuses_proxy: bool
    """It may take ``proxy.proxy_id`` instead of building a proxy."""
    scores: bool
    """After the proxy, the pool is scored in shards and ranked into a subset; else the proxy
    is the job's result."""


KINDS: dict[JobKind, KindEntry] = {
    JobKind.SELECT: KindEntry(
        JobKind.SELECT,
        "build or reuse a proxy, score the pool against the target tasks, rank, write a subset",
        targets=True,
        selection=True,
        reuses_proxy=True,
        scores=True,
    ),
    JobKind.PROXY_BUILD: KindEntry(
        JobKind.PROXY_BUILD,
        "build a proxy from the dataset (probe and alignment data) and keep it for later jobs",
        targets=False,
        selection=False,
        reuses_proxy=False,
        scores=False,
    ),
}


def kind_entry(kind: JobKind) -> KindEntry:
    """The entry of ``kind`` (every ``JobKind`` has one; a test checks)."""
    return KINDS[kind]
