"""Polling a job over HTTP until it ends."""

from __future__ import annotations

import json
import time
from typing import Any, Protocol


class Getter(Protocol):
    """httpx.Client or Starlette's TestClient (which is built on a different httpx)."""

    def get(self, url: str, /, *, params: Any = ..., headers: Any = ...) -> Any: ...


def wait_terminal(
    client: Getter, job_id: str, headers: dict[str, str], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {job['status']} ({job['stage']}) after {timeout}s")


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_subset(
    subset: list[dict[str, Any]], scores: dict[int, float], pool: list[dict[str, Any]], k: int
) -> None:
    """The subset is the k best-scored records, in order, with their original fields."""
    best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    assert [r["rank"] for r in subset] == list(range(1, k + 1))
    for r, i in zip(subset, best, strict=True):
        assert abs(r["score"] - scores[i]) < 1e-9
        assert {key: r[key] for key in pool[i]} == pool[i]
