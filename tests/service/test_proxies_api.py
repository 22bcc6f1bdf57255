"""/proxies: listing, reading, tenant isolation, and reuse checks at submission."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from service.auth.keys import tenant_for_key
from service.db import session_scope
from service.models import Proxy


def _add_proxy(
    auth: dict[str, str], target_model: str, manifest: dict[str, Any] | None = None
) -> str:
    key = auth["Authorization"].removeprefix("Bearer ")
    with session_scope() as s:
        tenant = tenant_for_key(s, key)
        assert tenant is not None
        proxy = Proxy(
            tenant_id=tenant,
            target_model=target_model,
            method="ipsvd",
            sparsity=0.5,
            path="/nowhere",
            sha256="0" * 64,
            manifest=manifest or {"method": "ipsvd", "proxy_params": 10},
        )
        s.add(proxy)
        s.flush()
        return proxy.id


def test_proxies_are_listed_read_and_isolated(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], model_dir: str
) -> None:
    ids = [_add_proxy(auth, model_dir) for _ in range(3)]
    page = client.get("/proxies", params={"limit": 2}, headers=auth).json()
    assert page["has_more"] is True
    rest = client.get("/proxies", params={"cursor": page["next_cursor"]}, headers=auth).json()
    assert rest["has_more"] is False
    assert sorted(p["id"] for p in page["items"] + rest["items"]) == sorted(ids)
    got = client.get(f"/proxies/{ids[0]}", headers=auth).json()
    assert got["manifest"]["proxy_params"] == 10 and got["target_model"] == model_dir
    assert client.get(f"/proxies/{ids[0]}", headers=other_auth).status_code == 404
    assert client.get("/proxies", headers=other_auth).json()["items"] == []


def test_reusing_a_proxy_is_checked(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    select_body: dict[str, Any],
    model_dir: str,
) -> None:
    mine = _add_proxy(auth, model_dir)
    other_model = _add_proxy(auth, "smollm2-135m-instruct")
    body = select_body | {"proxy": {"proxy_id": mine}}
    r = client.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202 and r.json()["proxy_id"] == mine
    for headers, proxy_id in ((other_auth, mine), (auth, other_model)):
        r = client.post(
            "/jobs", json=select_body | {"proxy": {"proxy_id": proxy_id}}, headers=headers
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "proxy.proxy_id"
    both = select_body | {"proxy": {"proxy_id": mine, "sparsity": 0.3}}
    r = client.post("/jobs", json=both, headers=auth)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "proxy"


def test_the_fidelity_report_is_a_typed_field_and_old_proxies_have_none(
    client: TestClient, auth: dict[str, str], model_dir: str
) -> None:
    from service.proxies.schemas import FidelityRead

    example = FidelityRead.model_config["json_schema_extra"]["example"]  # type: ignore[index]
    report = FidelityRead.model_validate(example).model_dump()
    with_report = _add_proxy(auth, model_dir, {"method": "ipsvd", "fidelity": report})
    got = client.get(f"/proxies/{with_report}", headers=auth).json()
    assert got["fidelity"] == report and got["fidelity"]["spearman"] == 0.62
    old = _add_proxy(auth, model_dir)  # built before the report existed
    assert client.get(f"/proxies/{old}", headers=auth).json()["fidelity"] is None
    odd = _add_proxy(auth, model_dir, {"method": "ipsvd", "fidelity": {"spearman": "high"}})
    r = client.get(f"/proxies/{odd}", headers=auth)  # another version's shape: null, never a 500
    assert r.status_code == 200 and r.json()["fidelity"] is None
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["FidelityRead"]["example"]["status"] == "measured"
    assert "spearman" in schema["FidelityRead"]["properties"]


def test_fidelity_settings_are_checked_at_submission(
    client: TestClient, auth: dict[str, str], select_body: dict[str, Any]
) -> None:
    for value in (1, -1):
        body = select_body | {"proxy": {"fidelity_samples": value}}
        r = client.post("/jobs", json=body, headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "proxy.fidelity_samples"
    r = client.post("/jobs", json=select_body | {"proxy": {"fidelity_targets": 0}}, headers=auth)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "proxy.fidelity_targets"
    body = select_body | {"proxy": {"fidelity_samples": 0, "fidelity_targets": 8}}
    r = client.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    assert r.json()["request"]["proxy"]["fidelity_samples"] == 0
