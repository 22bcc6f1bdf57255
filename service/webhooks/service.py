"""The rules of webhooks: the tenant's secret, which job endings are announced, and handing a
delivery to the worker once the ending is committed (never before, never blocking the job).

A job's ``notify`` names a URL and the endings (succeeded, failed, cancelled) to announce. When
a job ends, :func:`announce_on_commit` remembers the delivery on the session; once that
transaction commits, the delivery task is queued by name (a broker that is down then loses the
notification, which is logged: the job's own state never waits on a webhook).
"""

from __future__ import annotations

import base64
import logging
import secrets
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from service.errors import NotFound, ValidationFailed
from service.outbound import OutboundPolicy, OutboundRefused
from service.webhooks import repository as repo

log = logging.getLogger(__name__)

_PENDING = "iprox.webhooks.pending"


def new_secret() -> str:
    """``whsec_`` and the base64 of 32 random bytes (the Standard Webhooks secret format)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def ensure_secret(session: Session, tenant_id: str) -> str:
    """The tenant's secret, made now if it has none."""
    found = repo.secret_of(session, tenant_id)
    if found is not None:
        return found
    made = new_secret()
    repo.set_secret(session, tenant_id, made)
    return made


def read_secret(session: Session, tenant_id: str) -> str:
    found = repo.secret_of(session, tenant_id)
    if found is None:
        raise NotFound(
            "no webhook secret yet: POST /webhooks/secret makes one (so does the first job "
            "with notify)"
        )
    return found


def rotate_secret(session: Session, tenant_id: str) -> str:
    """A new secret; deliveries from now on are signed with it."""
    made = new_secret()
    repo.set_secret(session, tenant_id, made)
    return made


def check_url(url: str, policy: OutboundPolicy) -> None:
    """The URL passes the outbound address check (as dataset URLs do). Raises 422."""
    try:
        policy.check(url)
    except OutboundRefused as exc:
        raise ValidationFailed(f"{url!r} is refused: {exc}", field="notify.url") from None


def message_id(job_id: str, ending: str) -> str:
    """The delivery's ``webhook-id``: the same for every attempt of one job's one ending, so a
    receiver can drop duplicates."""
    return f"msg_{job_id}_{ending}"


def announce_on_commit(session: Session, job_id: str, request: dict[str, Any], ending: str) -> None:
    """Queue the job's webhook for ``ending`` once the transaction that ended it commits."""
    notify = request.get("notify")
    if not notify or ending not in notify.get("events", ()):
        return
    session.info.setdefault(_PENDING, []).append((job_id, ending, message_id(job_id, ending)))


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, [])
    if not pending:
        return
    from service.queue import TASK_DELIVER_WEBHOOK, get_dispatcher

    for args in pending:
        try:
            get_dispatcher().enqueue(TASK_DELIVER_WEBHOOK, *args)
        except Exception:  # the job ended all the same; only its notification is lost
            log.exception("job %s: could not queue its %s webhook", args[0], args[1])


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
