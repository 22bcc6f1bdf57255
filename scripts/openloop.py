"""An open-loop HTTP/1.1 load generator on asyncio streams (no client library: at 400 req/s
on two shared cores the client's own overhead would otherwise be what is measured).

Requests are sent on a fixed schedule whatever the answers do, and each latency is counted
from the moment the request was due, not from when a connection was free to send it: a
stalled server shows up as latency instead of as a lower offered rate ("coordinated
omission"). Connections are kept alive and reused; a new one is opened when all are busy.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    rate: float
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)  # answered 2xx
    statuses: dict[int, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # no answer: error name -> count
    connections: int = 0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.failures.values())

    def quantile_ms(self, q: float) -> float:
        ms = sorted(x * 1000 for x in self.latencies_s)
        return ms[min(len(ms) - 1, int(q * len(ms)))] if ms else float("nan")


# Below uvicorn's keep-alive timeout (5 s): a connection idle longer may be closing.
IDLE_S = 4.0


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = time.monotonic()

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        await self.reader.readexactly(length)
        if close:
            raise ConnectionResetError("server closed the connection")
        return status


async def run(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    rate: float,
    duration_s: float,
    timeout_s: float = 10.0,
) -> Result:
    """Offer ``rate`` GET requests per second for ``duration_s`` seconds."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
    result = Result(rate=rate, duration_s=duration_s)
    idle: list[_Conn] = []

    def reuse() -> _Conn | None:
        while idle:
            conn = idle.pop()
            if time.monotonic() - conn.used < IDLE_S:
                return conn
            conn.writer.close()
        return None

    async def one(due: float) -> None:
        conn = reuse()
        try:
            async with asyncio.timeout(timeout_s):
                if conn is None:
                    reader, writer = await asyncio.open_connection(host, port)
                    conn = _Conn(reader, writer)
                    result.connections += 1
                status = await conn.get(request)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            name = type(exc).__name__
            result.failures[name] = result.failures.get(name, 0) + 1
            if conn is not None:
                conn.writer.close()
            return
        took = time.perf_counter() - due
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            result.latencies_s.append(took)
        conn.used = time.monotonic()
        idle.append(conn)

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    n = int(rate * duration_s)
    for k in range(n):
        due = start + k / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.writer.close()
    return result
