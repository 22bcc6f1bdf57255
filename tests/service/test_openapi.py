"""The OpenAPI document: stable operation ids, a description and an example for every field,
parameter and endpoint, problem+json declared for the errors; the docs pages work offline."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"

OPERATIONS = {
    ("post", "/jobs"): "createJob",
    ("get", "/jobs"): "listJobs",
    ("get", "/jobs/{job_id}"): "getJob",
    ("post", "/jobs/{job_id}/cancel"): "cancelJob",
    ("get", "/jobs/{job_id}/events"): "listJobEvents",
    ("get", "/jobs/{job_id}/scores"): "listJobScores",
    ("get", "/jobs/{job_id}/subset"): "getJobSubset",
    ("get", "/proxies"): "listProxies",
    ("get", "/proxies/{proxy_id}"): "getProxy",
    ("get", "/healthz"): "getHealth",
    ("get", "/readyz"): "getReadiness",
    ("get", "/metrics"): "getMetrics",
    ("get", "/webhooks/secret"): "getWebhookSecret",
    ("post", "/webhooks/secret"): "rotateWebhookSecret",
}


def _spec(client: TestClient) -> dict[str, Any]:
    spec: dict[str, Any] = client.get("/openapi.json").json()
    return spec


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, p): op for p, ops in spec["paths"].items() for m, op in ops.items()}


def test_operation_ids_are_stable_and_every_endpoint_is_described(client: TestClient) -> None:
    ops = _operations(_spec(client))
    assert {k: op["operationId"] for k, op in ops.items()} == OPERATIONS
    for key, op in ops.items():
        assert op.get("summary") and op.get("description"), key
        for param in op.get("parameters", []):
            where = (key, param["name"])
            assert param.get("description"), where
            # Query(examples=...) lands on the parameter's schema (JSON Schema, OpenAPI 3.1).
            assert param.get("examples") or param["schema"].get("examples"), where
        body = op.get("requestBody")
        if body is not None:
            schema = body["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/JobCreate"}
    job_create = _spec(client)["components"]["schemas"]["JobCreate"]
    assert job_create["examples"][0]["kind"] == "select"


def _undescribed(spec: dict[str, Any]) -> list[str]:
    missing = []
    for name, schema in spec["components"]["schemas"].items():
        if schema.get("enum"):
            continue  # an enum is described where a field uses it
        assert schema.get("description"), f"schema {name} has no description"
        for prop, field in schema.get("properties", {}).items():
            if not field.get("description"):
                missing.append(f"{name}.{prop}: description")
            if "examples" not in field and "example" not in field:
                missing.append(f"{name}.{prop}: example")
    return missing


def test_every_field_has_a_description_and_an_example(client: TestClient) -> None:
    spec = _spec(client)
    assert _undescribed(spec) == []
    count = sum(len(s.get("properties", {})) for s in spec["components"]["schemas"].values())
    assert count > 80  # the check covered the whole document
    # Internal notes are not descriptions.
    create = _operations(spec)[("post", "/jobs")]
    assert "task name" not in create["description"]


def test_errors_are_declared_as_problem_json(client: TestClient) -> None:
    spec = _spec(client)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    expected = {
        ("post", "/jobs"): {"401", "403", "422", "500", "503"},
        ("get", "/jobs/{job_id}"): {"401", "404", "500", "503"},
        ("post", "/jobs/{job_id}/cancel"): {"401", "403", "404", "409", "500", "503"},
        ("post", "/webhooks/secret"): {"401", "403", "500", "503"},
        ("get", "/jobs/{job_id}/subset"): {"401", "404", "409", "422", "500", "503"},
        ("get", "/proxies/{proxy_id}"): {"401", "404", "500", "503"},
        ("get", "/readyz"): {"503"},
    }
    ops = _operations(spec)
    for key, statuses in expected.items():
        responses = ops[key]["responses"]
        assert statuses <= set(responses), (key, set(responses))
    for key, op in ops.items():
        for status, response in op["responses"].items():
            if status[0] in "45":
                assert set(response["content"]) == {PROBLEM}, (key, status)
                assert response["content"][PROBLEM]["schema"] == problem_ref, (key, status)


def test_403_is_declared_exactly_where_a_read_key_is_refused(client: TestClient) -> None:
    # A read key may GET (and HEAD) but for the webhook secret; everything else needs write.
    ops = _operations(_spec(client))
    refused = {k for k, op in ops.items() if op.get("security") and k[0] not in ("get", "head")}
    assert refused == {
        ("post", "/jobs"),
        ("post", "/jobs/{job_id}/cancel"),
        ("post", "/webhooks/secret"),
    }
    refused.add(("get", "/webhooks/secret"))
    assert {k for k, op in ops.items() if "403" in op["responses"]} == refused
    forbidden = ops[("post", "/jobs")]["responses"]["403"]
    assert "scope" in forbidden["description"]


def test_docs_and_redoc_load_only_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        urls += re.findall(r"""(?:url|openapi_url|spec-url)\s*[:=]\s*["']([^"']+)["']""", html)
        assert urls, page
        for url in urls:
            assert url.startswith("/"), (page, url)  # nothing from a CDN
            if url != "/openapi.json":
                asset = client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
        assert "http://" not in html and "https://" not in html.replace("https://iprox.dev", ""), (
            page
        )
