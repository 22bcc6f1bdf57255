"""A local HTTP server that trickles its answer: a byte now and then, each well within any
per-read timeout, so only a deadline over the whole request can stop a client waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b'{"text": "slow"}\n'  # 17 bytes: 0.85 s in all
TRICKLE_S = 0.05  # between two bytes


class _Trickle(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def _slowly(self, data: bytes) -> None:
        for byte in data:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(TRICKLE_S)

    def do_HEAD(self) -> None:
        # Headers one byte at a time. OSError: the client gave up.
        with suppress(OSError):
            self._slowly(b"HTTP/1.0 200 OK\r\nContent-Length: 17\r\n\r\n")

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        with suppress(OSError):
            self._slowly(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def trickling_server() -> Iterator[str]:
    """Serve on a free local port; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
