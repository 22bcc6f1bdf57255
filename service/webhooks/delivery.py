"""Sending one webhook delivery (run by the worker's ``iprox.deliver_webhook`` task).

Standard Webhooks: a JSON POST with ``webhook-id`` (the same for every attempt of one event),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"`` keyed with the tenant's secret).
A 2xx answer is a delivery; anything else (another status, a redirect, a timeout, a refused
address) is a failed attempt, retried after ``IPROX_WEBHOOK_BACKOFF_S`` doubled per attempt, up to
``IPROX_WEBHOOK_MAX_ATTEMPTS``. Every attempt is recorded in the job's events (type ``webhook``).
The URL passes the outbound address check at every attempt, and the connection goes to the
address that was checked (service/outbound.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from service.config import Settings
from service.db import session_scope
from service.jobs import repository as jobs_repo
from service.models import Job
from service.outbound import OutboundPolicy, OutboundRefused
from service.webhooks.service import ensure_secret


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one delivery."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def payload(job: Job, ending: str, labels: dict[str, str]) -> dict[str, Any]:
    """The event: its type, when it happened, and the job as a pipeline needs it."""
    return {
        "type": f"job.{ending}",
        "timestamp": (job.finished_at or job.updated_at).isoformat(),
        "data": {
            "id": job.id,
            "kind": job.kind.value,
            "status": job.status.value,
            "partial": job.partial,
            "error": {"code": job.error_code, "message": job.error_message}
            if job.error_code
            else None,
            "result": job.result,
            "metadata": labels,
            "links": {"self": f"/jobs/{job.id}", "subset": f"/jobs/{job.id}/subset"},
        },
    }


def backoff_s(attempt: int, settings: Settings) -> float:
    """Wait after failed attempt ``attempt`` (1-based): the base, doubled per attempt, capped."""
    return float(
        min(settings.webhook_max_backoff_s, settings.webhook_backoff_s * 2 ** (attempt - 1))
    )


def post(
    url: str, body: bytes, headers: dict[str, str], policy: OutboundPolicy, timeout_s: float
) -> int:
    """POST to the checked address of ``url`` (no redirects followed); returns the status."""
    target = policy.check(url)
    extensions: dict[str, Any] = {}
    if url.lower().startswith("https:"):
        extensions["sni_hostname"] = target.host
    with httpx.Client(follow_redirects=False, timeout=timeout_s) as client:
        req = client.build_request(
            "POST",
            target.pinned_url,
            content=body,
            headers=headers | {"Host": target.host_header},
            extensions=extensions,
        )
        return client.send(req).status_code


def deliver(
    job_id: str, ending: str, msg_id: str, attempt: int, settings: Settings
) -> float | None:
    """Attempt ``attempt`` of the job's webhook for ``ending``. Returns the seconds to wait
    before the next attempt, or None when there is none (delivered, given up, or the job or
    its ``notify`` is gone)."""
    with session_scope() as s:
        job = jobs_repo.get_job_any_tenant(s, job_id)
        notify = (job.request or {}).get("notify") if job is not None else None
        if job is None or not notify:
            return None
        url = str(notify["url"])
        secret = ensure_secret(s, job.tenant_id)
        labels = jobs_repo.labels_of(s, [job_id])[job_id]
        body = json.dumps(payload(job, ending, labels), separators=(",", ":")).encode()
    stamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "iprox-service-webhooks",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
    }
    code: int | None = None
    try:
        code = post(url, body, headers, settings.outbound, settings.webhook_timeout_s)
        problem = None if 200 <= code < 300 else f"HTTP {code}"
    except OutboundRefused as exc:
        problem = f"refused: {exc}"
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"[:500]
    data: dict[str, Any] = {
        "event": f"job.{ending}",
        "webhook_id": msg_id,
        "url": url,
        "attempt": attempt,
        "status_code": code,
    }
    retry_in = None
    if problem is None:
        message = f"webhook job.{ending} delivered (HTTP {code}, attempt {attempt})"
    elif attempt >= settings.webhook_max_attempts:
        message = f"webhook job.{ending} given up after {attempt} attempts: {problem}"
    else:
        retry_in = backoff_s(attempt, settings)
        data["retry_in_s"] = retry_in
        message = (
            f"webhook job.{ending} attempt {attempt} failed: {problem}; next in {retry_in:g} s"
        )
    with session_scope() as s:
        jobs_repo.add_event(s, job_id, "webhook", message, data=data)
    return retry_in
