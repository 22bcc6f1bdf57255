"""The /ui page in headless Chromium (Debian's chromium package) against a finished job: the
histogram of scores and the top records are drawn; a screenshot goes to docs/ for the README.

Chromium may only reach the test's own server: every other host resolves to nothing and its
background services are off."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from tests.worker.inline import InlineQueue

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOT = DOCS / "ui-job.png"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on PATH (apt-get install -y --no-install-recommends chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(service_db: str) -> Iterator[str]:
    """The real app on a loopback port, served by uvicorn in a thread."""
    from service.main import create_app

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _run(chromium: str, profile: Path, *args: str) -> str:
    r = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_the_job_page_draws_the_histogram_and_the_top_records(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    live_server: str,
    tmp_path: Path,
) -> None:
    chromium = _chromium()
    job_id = client.post("/jobs", json=job_body(selection={"top_k": 4}), headers=auth).json()["id"]
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    key = auth["Authorization"].removeprefix("Bearer ")
    url = f"{live_server}/ui?key={key}#/jobs/{job_id}"
    dom = _run(chromium, tmp_path / "profile", "--dump-dom", url)
    assert 'data-ready="1"' in dom, dom[-2000:]
    # The histogram: one bar per bin, the counts adding up to the pool's six scores.
    svg = re.search(r'<svg[^>]*id="histogram".*?</svg>', dom, re.S)
    assert svg is not None, dom[-2000:]
    counts = [int(c) for c in re.findall(r'<rect class="bin"[^>]*data-count="(\d+)"', svg.group())]
    assert len(counts) == 20 and sum(counts) == 6
    # The top records, best first, as the API ranks them.
    subset = client.get(f"/jobs/{job_id}/subset", params={"format": "json"}, headers=auth).json()
    table = re.search(r'<table id="top-records">.*?</table>', dom, re.S)
    assert table is not None
    ranks = re.findall(r'<tr><td class="num">(\d+)</td><td>([^<]*)</td>', table.group())
    assert [(int(r), i) for r, i in ranks] == [(s["rank"], s["id"]) for s in subset]
    for part in ('id="timeline"', 'id="proxy"', 'id="downloads"', "subset (JSONL)", "loading"):
        assert part in dom, part
    # The key was stored and taken out of the address bar; the jobs list works with it.
    listing = _run(chromium, tmp_path / "profile", "--dump-dom", f"{live_server}/ui#/")
    assert 'data-ready="1"' in listing and job_id[:8] in listing
    DOCS.mkdir(exist_ok=True)
    shot = tmp_path / "ui.png"
    _run(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,720", url)
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT)
