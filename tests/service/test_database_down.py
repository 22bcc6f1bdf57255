"""With the database gone, every endpoint that needs it answers 503 problem+json quickly, over
a connection that stays open; /healthz stays 200; service resumes when the database returns.
The database "goes away" behind a TCP proxy on 127.0.0.1 (tests/tcp_proxy.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from sqlalchemy.engine import make_url

from tests.netguard import ConnectLog
from tests.service.kit import service_environ
from tests.service.plugin import new_key
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def proxied_db(service_db: str) -> Iterator[TcpProxy]:
    url = make_url(service_db)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    with service_environ({"IPROX_DATABASE_URL": proxied, "IPROX_DB_CONNECT_TIMEOUT_S": "2"}):
        try:
            yield proxy
        finally:
            proxy.stop()


@pytest.fixture
def served(proxied_db: TcpProxy) -> Iterator[str]:
    """The app under a real uvicorn on 127.0.0.1 (keep-alive is a property of the server)."""
    from service.main import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_database_outage_is_a_503_with_retry_after(
    served: str, proxied_db: TcpProxy, net_guard: ConnectLog
) -> None:
    auth = {"Authorization": f"Bearer {new_key()}"}
    # Never used before the outage, so not in the API's key cache: its check needs the database.
    unchecked = {"Authorization": f"Bearer {new_key()}"}
    # A well-formed job with an Idempotency-Key: POST /jobs gets past validation (422) and
    # looks the key up first, in the database.
    job = {
        "kind": "select",
        "dataset_uri": "file:///nowhere/pool.jsonl",
        "target_uri": "file:///nowhere/target.jsonl",
        "target_model": "m",
        "selection": {"top_k": 1},
    }
    port = int(served.rsplit(":", 1)[1])
    with httpx.Client(base_url=served, timeout=30) as http:
        assert http.get("/jobs", headers=auth).status_code == 200
        proxied_db.stop()
        for method, path, headers in [
            ("GET", "/jobs", auth),
            ("GET", "/jobs", unchecked),
            ("GET", "/jobs/some-id", auth),
            ("GET", "/jobs/some-id/scores", auth),
            ("POST", "/jobs/some-id/cancel", auth),
            ("GET", "/proxies", auth),
            ("POST", "/jobs", auth | {"Idempotency-Key": "outage"}),
            ("GET", "/readyz", auth),
        ]:
            started = time.monotonic()
            body = job if path == "/jobs" and method == "POST" else None
            r = http.request(method, path, headers=headers, json=body)
            took = time.monotonic() - started
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "database_unavailable"
            assert int(r.headers["retry-after"]) > 0
            assert took < 5, (path, took)
        assert http.get("/healthz").json() == {"status": "ok"}
        proxied_db.start()
        assert http.get("/jobs", headers=auth).status_code == 200  # back by itself
    assert net_guard.attempts.count(("127.0.0.1", port)) == 1  # one kept-alive connection
