"""Every error of the API is problem+json: FastAPI's and Starlette's own included."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"


def _problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["code"] == code, body
    assert {"type", "title", "detail", "instance"} <= set(body)
    return body


def test_an_unknown_route_and_a_wrong_method_are_problems(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = _problem(client.get("/no/such/route", headers=auth), 404, "not_found")
    assert body["detail"] == "no route /no/such/route" and body["instance"] == "/no/such/route"
    r = client.delete("/jobs", headers=auth)
    body = _problem(r, 405, "method_not_allowed")
    assert "DELETE" in body["detail"]
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}


def test_an_unhandled_error_is_a_problem_not_text(service_db: str) -> None:
    from service.main import create_app

    app = create_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as c:
        body = _problem(c.get("/boom"), 500, "internal")
    assert "a bug" not in body["detail"]  # internals stay in the log


def test_malformed_json_names_the_line_and_column(client: TestClient, auth: dict[str, str]) -> None:
    text = '{\n  "kind": "select",\n  "dataset_uri": "file:///x.jsonl"\n  "top_k": 3\n}'
    r = client.post("/jobs", content=text, headers=auth | {"Content-Type": "application/json"})
    body = _problem(r, 422, "validation_failed")
    [error] = body["errors"]
    assert error["field"] == "body"
    assert (error["line"], error["column"]) == (4, 3)
    assert "line 4, column 3" in error["message"] and "delimiter" in error["message"]
    assert body["detail"].startswith("body: malformed JSON at line 4, column 3")
