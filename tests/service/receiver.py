"""A webhook receiver on 127.0.0.1 that checks each delivery's Standard Webhooks signature and
answers from a script of status codes (then 200s)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from iprox_client.webhooks import WebhookVerificationError, verify_webhook


@dataclass
class Receiver:
    url: str
    secret: str = ""
    answers: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)  # verified payloads
    headers: list[dict[str, str]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # why a delivery failed verification
    arrived: threading.Event = field(default_factory=threading.Event)


@contextmanager
def webhook_receiver(answers: list[int] | None = None) -> Iterator[Receiver]:
    """Serve on a free 127.0.0.1 port. Set ``secret`` before deliveries arrive: each is
    verified with it (a delivery that fails verification is answered 400)."""
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = box[0]
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            rec.headers.append(headers)
            try:
                payload = verify_webhook(rec.secret, headers, body)
            except WebhookVerificationError as exc:
                rec.rejected.append(str(exc))
                code = 400
            else:
                code = rec.answers.pop(0) if rec.answers else 200
                if 200 <= code < 300:
                    rec.received.append(payload)
                    rec.arrived.set()
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(
        Receiver(
            url=f"http://127.0.0.1:{server.server_address[1]}/hook", answers=list(answers or [])
        )
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
