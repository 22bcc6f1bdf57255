"""The reconciler: finds work that no worker will finish and sends it again.

It reads the database, never the broker: a shard whose claimant stopped beating, a message
that vanished (a broker restarted without persistence), a step that failed on an outage and
ran out of retries all look the same here: work not done and nobody on it for longer than
``IPROX_SHARD_STALE_AFTER_S``. Celery beat runs it every ``IPROX_RECONCILE_INTERVAL_S`` in
production (task ``iprox.reconcile``); ``iprox serve`` runs it on a timer thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from service.config import Settings
from service.db import session_scope
from service.jobs import repository as repo
from service.jobs import state
from service.models.base import utcnow

log = logging.getLogger(__name__)


def reconcile(settings: Settings, enqueue: Callable[..., None]) -> list[state.Requeue]:
    """One pass over unfinished jobs; returns the messages it sent. Each job is decided and
    committed under its own lock before its messages go out: a crash in between costs one
    stale window, never a message about uncommitted state."""
    stale_before = utcnow() - timedelta(seconds=settings.shard_stale_after_s)
    with session_scope() as s:
        ids = repo.stranded_candidates(s, stale_before)
    sent: list[state.Requeue] = []
    for job_id in ids:
        with session_scope() as s:
            todo = state.recover(s, job_id, stale_before, settings.max_retries)
        for task, args in todo:
            log.info("reconciler: sending %s%r again", task, args)
            enqueue(task, *args)
        sent += todo
    return sent
