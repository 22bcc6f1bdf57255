"""Checking a webhook delivery from iprox-service (the Standard Webhooks scheme).

A delivery carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256>``, several separated by spaces while a secret is
rotated) over ``"{id}.{timestamp}.{body}"``, keyed with the tenant's secret (``whsec_<base64>``,
as ``POST /webhooks/secret`` gave it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from iprox_client.errors import IproxError

TOLERANCE_S = 300


class WebhookVerificationError(IproxError):
    """The delivery's headers are missing, too old, or its signature does not match."""


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,...`` signature of one delivery (what the service sends)."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery and return its JSON payload; raise :class:`WebhookVerificationError`
    when a header is missing, the timestamp is more than ``tolerance_s`` from now, or no
    signature matches."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, signatures = (
            lower["webhook-id"],
            lower["webhook-timestamp"],
            lower["webhook-signature"],
        )
        timestamp = int(stamp)
    except (KeyError, ValueError) as exc:
        raise WebhookVerificationError(f"missing or malformed webhook header ({exc})") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookVerificationError("the delivery's timestamp is outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise WebhookVerificationError("the payload is not a JSON object")
            return payload
    raise WebhookVerificationError("no signature matches")
