"""The API served over real HTTP on 127.0.0.1 (uvicorn on a thread), for clients that must
talk to it as a pipeline would: the Python client, the CLI in a subprocess."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from tests.integration.conftest import Stack
from tests.service.kit import service_environ


@contextmanager
def live_api(stack: Stack) -> Iterator[str]:
    """Serve the app on a free port; yields its base URL (the stack's settings set meanwhile)."""
    with service_environ(stack.env):
        yield from _serve()


def _serve() -> Iterator[str]:
    from service.main import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
