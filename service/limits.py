"""Load shedding: past a bound on requests in progress, answer 503 at once.

Under an open-loop overload, queued requests only grow older (each waits for a threadpool
slot, then for a pooled connection) until all of them time out together. Refusing the excess
quickly keeps the answered ones fast, and the API recovers as soon as the load falls. The
health probes are never shed.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Overloaded, problem

EXEMPT = ("/healthz", "/readyz")


class InflightLimit:
    """Pure ASGI middleware; the counter lives on the one event loop, so it needs no lock."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            busy = Overloaded(
                f"more than {self.limit} requests in progress (IPROX_API_MAX_INFLIGHT)"
            )
            response = problem(
                busy.status,
                busy.title,
                busy.detail,
                busy.code,
                scope["path"],
                retry_after=busy.retry_after,
            )
            await response(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
