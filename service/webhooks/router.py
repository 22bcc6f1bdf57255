"""HTTP routes of /webhooks: the tenant's signing secret."""

from __future__ import annotations

from fastapi import APIRouter

from service.auth.deps import TenantDep, WriterDep
from service.db import session_scope
from service.errors import problem_responses
from service.webhooks import service
from service.webhooks.schemas import WebhookSecret

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.get(
    "/secret",
    response_model=WebhookSecret,
    operation_id="getWebhookSecret",
    summary="Get the webhook signing secret",
    responses=problem_responses(401, 403, 404, 500, 503),
)
def get_secret(tenant: WriterDep) -> WebhookSecret:
    """The secret that signs this tenant's webhook deliveries (404 before there is one). Needs a
    write key: whoever holds the secret can forge deliveries."""
    with session_scope() as session:
        return WebhookSecret(secret=service.read_secret(session, tenant))


@router.post(
    "/secret",
    response_model=WebhookSecret,
    operation_id="rotateWebhookSecret",
    summary="Rotate the webhook signing secret",
    responses=problem_responses(401, 403, 500, 503),
)
def rotate_secret(tenant: TenantDep) -> WebhookSecret:
    """Make a new secret (the old one stops signing at once) and return it."""
    with session_scope() as session:
        return WebhookSecret(secret=service.rotate_secret(session, tenant))
