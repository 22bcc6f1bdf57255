"""The outbound address check (SSRF): refused forms, pinning, redirect hops, the API's HEAD and
the worker's GET. Every local server is on 127.0.0.1; the socket guard (tests/netguard.py)
records what was attempted, so a refused address is shown never to have been connected to."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.datasets import check_uri
from service.errors import ValidationFailed
from service.outbound import OutboundPolicy, OutboundRefused, is_public
from tests.netguard import ConnectLog
from worker.tasks.inputs import InputError, local_input

REFUSED_HOSTS = [
    "127.0.0.1",
    "127.1.2.3",
    "[::1]",
    "0x7f000001",  # hex
    "2130706433",  # decimal
    "0177.0.0.1",  # octal
    "017700000001",  # octal, one number
    "127.1",  # short form
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[2002:a00:1::]",  # 6to4 of 10.0.0.1
    "localhost",
    "localhost.",
    "LOCALHOST",
    "169.254.169.254",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # shared address space
    "192.0.2.7",  # documentation
    "224.0.0.1",  # multicast
    "255.255.255.255",
    "0.0.0.0",
    "0",
    "[::]",
    "[fe80::1]",
    "[fc00::1]",
    "[ff02::1]",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_addresses_that_are_not_public_are_refused(host: str, net_guard: ConnectLog) -> None:
    with pytest.raises(OutboundRefused, match="not a public address"):
        OutboundPolicy().check(f"http://{host}:8080/pool.jsonl")
    assert net_guard.attempts == []


def test_public_addresses_pass_and_are_pinned() -> None:
    target = OutboundPolicy().check("https://93.184.216.34/data/pool.jsonl?v=1")
    assert str(target.address) == "93.184.216.34" and target.port == 443
    assert target.pinned_url == "https://93.184.216.34:443/data/pool.jsonl?v=1"
    v6 = OutboundPolicy().check("http://[2606:2800:220:1:248:1893:25c8:1946]:81/a.jsonl")
    assert v6.pinned_url == "http://[2606:2800:220:1:248:1893:25c8:1946]:81/a.jsonl"
    assert v6.host_header == "[2606:2800:220:1:248:1893:25c8:1946]:81"
    for text in ("8.8.8.8", "2001:4860:4860::8888"):
        import ipaddress

        assert is_public(ipaddress.ip_address(text))


def test_a_name_that_resolves_to_loopback_is_refused() -> None:
    def fake(host: str, port: int) -> list[str]:
        return {"rebind.test": ["127.0.0.1"], "mixed.test": ["93.184.216.34", "10.1.2.3"]}[host]

    policy = OutboundPolicy(resolver=fake)
    with pytest.raises(OutboundRefused, match=r"'rebind.test' resolves to 127.0.0.1"):
        policy.check("http://rebind.test/pool.jsonl")
    # One private answer among public ones is enough: a later lookup could pick it.
    with pytest.raises(OutboundRefused, match=r"10\.1\.2\.3"):
        policy.check("http://mixed.test/pool.jsonl")


def test_allowed_hosts_take_names_and_networks() -> None:
    def fake(host: str, port: int) -> list[str]:
        return ["10.0.0.5"]

    policy = OutboundPolicy(["files.lan.", "127.0.0.0/8", "fd00::/8"], resolver=fake)
    assert str(policy.check("http://FILES.lan/x.jsonl").address) == "10.0.0.5"
    assert str(policy.check("http://127.0.0.9:1/x.jsonl").address) == "127.0.0.9"
    assert str(policy.check("http://[fd00::7]/x.jsonl").address) == "fd00::7"
    with pytest.raises(OutboundRefused):
        policy.check("http://other.lan/x.jsonl")  # resolves to 10.0.0.5 too, but not named
    with pytest.raises(OutboundRefused):
        policy.check("http://[::1]/x.jsonl")  # 127.0.0.0/8 says nothing about IPv6
    with pytest.raises(OutboundRefused, match="credentials"):
        policy.check("http://user:pw@files.lan/x.jsonl")
    with pytest.raises(OutboundRefused, match="scheme"):
        policy.check("ftp://files.lan/x.jsonl")


class _Site(BaseHTTPRequestHandler):
    """A path in ``routes`` answers 302 to its URL; ``*pool.jsonl`` a record; others 404.
    Every request is logged in ``seen``."""

    routes: ClassVar[dict[str, str]] = {}
    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def _answer(self, body: bool) -> None:
        type(self).seen.append((self.command, self.path, self.headers.get("Host")))
        target = type(self).routes.get(self.path)
        if target is not None:
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = b'{"text": "a"}\n'
        self.send_response(200 if self.path.endswith("pool.jsonl") else 404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def site(routes: dict[str, str]) -> Iterator[tuple[int, list[tuple[str, str, str | None]]]]:
    seen: list[tuple[str, str, str | None]] = []
    handler = type("Site", (_Site,), {"routes": routes, "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def _head(uri: str, policy: OutboundPolicy) -> None:
    check_uri(
        uri,
        "dataset_uri",
        data_roots=[],
        http_max_bytes=10_000,
        http_timeout_s=5,
        http_total_timeout_s=10,
        outbound=policy,
    )


REFUSED_TARGETS = [
    "http://169.254.169.254/latest/pool.jsonl",
    "http://10.0.0.1/pool.jsonl",
    "http://127.0.0.2:{port}/pool.jsonl",  # loopback, but not the allowed 127.0.0.1
    "http://[::ffff:169.254.169.254]/pool.jsonl",
]


@pytest.mark.parametrize("refused", REFUSED_TARGETS)
def test_head_check_refuses_a_redirect_hop(refused: str, net_guard: ConnectLog) -> None:
    with site({}) as (port, _):
        pass  # a free port for the {port} case, closed again
    target = refused.format(port=port)
    routes = {"/a.jsonl": "/b.jsonl", "/b.jsonl": target}
    with site(routes) as (port, seen):
        with pytest.raises(ValidationFailed, match="refused") as err:
            _head(f"http://127.0.0.1:{port}/a.jsonl", OutboundPolicy(["127.0.0.1"]))
        assert err.value.field == "dataset_uri"
        assert [p for _, p, _ in seen] == ["/a.jsonl", "/b.jsonl"]
    host = target.split("//")[1].split("/")[0].rsplit(":", 1)[0] if "[" not in target else None
    assert net_guard.blocked == []  # refused by the check, not by the test guard
    assert all(h == "127.0.0.1" for h, _ in net_guard.attempts), net_guard.attempts
    if host:
        assert not net_guard.tried(host)


def test_head_check_follows_allowed_redirects_to_the_pinned_address(
    net_guard: ConnectLog,
) -> None:
    lookups: list[str] = []

    def fake(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    policy = OutboundPolicy(["pool.test"], resolver=fake)
    # Two servers: the first redirects by name to the second; the name only resolves through
    # the fake resolver, once per hop, and the Host header keeps the name.
    with site({}) as (second, seen2):
        routes = {"/a.jsonl": f"http://pool.test:{second}/pool.jsonl"}
        with site(routes) as (first, seen1):
            _head(f"http://pool.test:{first}/a.jsonl", policy)
    assert seen1 == [("HEAD", "/a.jsonl", f"pool.test:{first}")]
    assert seen2 == [("HEAD", "/pool.jsonl", f"pool.test:{second}")]
    assert lookups == ["pool.test", "pool.test"]
    assert net_guard.attempts == [("127.0.0.1", first), ("127.0.0.1", second)]


def test_loopback_is_refused_without_an_allowance(net_guard: ConnectLog) -> None:
    with site({}) as (port, seen):
        for host in ("127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "0x7f000001", "localhost."):
            with pytest.raises(ValidationFailed, match="refused"):
                _head(f"http://{host}:{port}/pool.jsonl", OutboundPolicy())
        assert seen == []
    assert net_guard.attempts == []


def test_worker_download_checks_every_hop(tmp_path: Path, net_guard: ConnectLog) -> None:
    settings = Settings(home=tmp_path, allowed_hosts=["127.0.0.1"])
    with site({"/a.jsonl": "http://169.254.169.254/pool.jsonl"}) as (port, seen):
        with pytest.raises(InputError, match="refused"):
            local_input(f"http://127.0.0.1:{port}/a.jsonl", "dataset_uri", tmp_path, settings)
        got = local_input(f"http://127.0.0.1:{port}/pool.jsonl", "dataset_uri", tmp_path, settings)
        assert got.read_bytes() == b'{"text": "a"}\n'
        with pytest.raises(InputError, match="refused"):
            local_input(f"http://2130706433:{port}/pool.jsonl", "dataset_uri", tmp_path, Settings())
    assert [p for _, p, _ in seen] == ["/a.jsonl", "/pool.jsonl"]
    assert net_guard.blocked == [] and not net_guard.tried("169.254.169.254")


def test_api_refuses_loopback_dataset_uris(
    client: TestClient,
    auth: dict[str, str],
    select_body: dict[str, Any],
    net_guard: ConnectLog,
    data_file: Callable[..., str],
) -> None:
    with site({}) as (port, seen):
        for uri in (
            f"http://127.0.0.1:{port}/pool.jsonl",
            f"http://[::1]:{port}/pool.jsonl",
            f"http://0x7f000001:{port}/pool.jsonl",
            f"http://2130706433:{port}/pool.jsonl",
        ):
            r = client.post("/jobs", json=select_body | {"dataset_uri": uri}, headers=auth)
            assert r.status_code == 422, r.text
            assert r.json()["errors"][0]["field"] == "dataset_uri"
            assert "not a public address" in r.json()["detail"]
        r = client.post(
            "/jobs",
            json=select_body | {"target_uri": f"http://localhost.:{port}/pool.jsonl"},
            headers=auth,
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "target_uri"
        assert seen == []
    assert not net_guard.tried("127.0.0.1", port) and not net_guard.tried("::1", port)


def test_https_is_pinned_with_the_name_in_sni_and_certificate_check(
    tmp_path: Path, net_guard: ConnectLog
) -> None:
    """The connection goes to the checked address while TLS speaks to the name: SNI carries it
    and the certificate is verified against it (a certificate for another name fails)."""
    import asyncio
    import shutil
    import ssl
    import subprocess

    import httpx

    from service.outbound import send_checked

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=pool.test"),
            *("-addext", "subjectAltName=DNS:pool.test"),
        ],
        check=True,
        capture_output=True,
    )
    names: list[str | None] = []
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    seen: list[tuple[str, str, str | None]] = []
    handler = type("Site", (_Site,), {"routes": {}, "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    policy = OutboundPolicy(["pool.test", "other.test"], resolver=lambda h, p: ["127.0.0.1"])

    async def head(url: str) -> int:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=client_ctx, timeout=5) as client:
            resp = await send_checked(client, "HEAD", url, policy)
            await resp.aclose()
            return resp.status_code

    try:
        assert asyncio.run(head(f"https://pool.test:{port}/pool.jsonl")) == 200
        with pytest.raises(httpx.ConnectError, match="certificate"):
            asyncio.run(head(f"https://other.test:{port}/pool.jsonl"))
    finally:
        server.shutdown()
        server.server_close()
    assert names[:2] == ["pool.test", "other.test"]
    assert seen == [("HEAD", "/pool.jsonl", f"pool.test:{port}")]
    assert set(net_guard.attempts) == {("127.0.0.1", port)}
