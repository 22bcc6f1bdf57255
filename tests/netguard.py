"""A socket-level guard: every test may connect to loopback addresses only.

``socket.socket.connect`` (which ``create_connection``, asyncio, anyio and httpx all end in) is
wrapped; an address outside 127.0.0.0/8 and ::1 is recorded and refused before any packet is
sent. Tests of outbound checks also read what was attempted, to show that a refused address was
never even tried.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a name: the C library would resolve it; tests connect by address
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    return any(ip.version == net.version and ip in net for net in LOOPBACK)


@dataclass
class ConnectLog:
    attempts: list[tuple[str, int]] = field(default_factory=list)  # every inet connect
    blocked: list[tuple[str, int]] = field(default_factory=list)  # refused by the guard

    def tried(self, host: str, port: int | None = None) -> bool:
        return any(h == host and (port is None or p == port) for h, p in self.attempts)


@contextmanager
def loopback_only() -> Iterator[ConnectLog]:
    log = ConnectLog()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # unix sockets stay on this machine
        host, port = str(address[0]), int(address[1])
        log.attempts.append((host, port))
        if not _is_loopback(host):
            log.blocked.append((host, port))
            raise ConnectionRefusedError(f"test guard: no connection to {host}:{port}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    try:
        yield log
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign,assignment]
