"""Property-based run of the whole API from its own OpenAPI document (schemathesis, a bounded
number of examples per operation): no answer is a 5xx, and every answer keeps to the document
(status codes, media types, headers and bodies as declared)."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_the_api_keeps_to_its_schema(service_db: str, auth: dict[str, str]) -> None:
    from service.config import get_settings
    from service.main import create_app

    # No worker listens on the test queue: keep the readiness ping's wait short.
    get_settings().readyz_worker_timeout_s = 0.05
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == 14
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same examples every run: a failure here reproduces
            database=None,
        )
        def check(case: Any) -> None:
            if case.operation.definition.raw.get("operationId") != "getReadiness":
                case.call_and_validate(headers=auth, checks=CHECKS)
                return
            # Readiness answers 503 by design when fewer workers than min_workers answer
            # (none runs here); anything else must be a 200.
            response = case.call_and_validate(headers=auth, checks=CHECKS[1:])
            wanted = int((case.query or {}).get("min_workers", 0))
            assert response.status_code == (503 if wanted > 0 else 200), response.text

        check()
