"""``Client``: submit a job, wait for it, read its events and scores, download its subset.

Every request is retried with exponential backoff (``backoff * 2**attempt`` seconds, at most
``max_backoff``, or what ``Retry-After`` says) on 429 and 503 answers and on connection errors,
``retries`` times. ``submit`` sends an ``Idempotency-Key`` (a fresh one per call unless given), so
a retried submission can never create a second job.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx

from iprox_client.errors import ApiError, ConnectionFailed, JobFailed, WaitTimeout, api_error
from iprox_client.models import Event, Job, Score

SubsetFormat = Literal["jsonl", "json", "parquet"]
ScoreFormat = Literal["jsonl", "csv", "parquet"]
RETRY_STATUSES = frozenset({429, 503})


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the client's own backoff


def _problem(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {"detail": resp.text[:500] or resp.reason_phrase}
    return body if isinstance(body, dict) else {"detail": str(body)[:500]}


class Client:
    """A client of one iprox-service deployment.

    ``base_url``: the API's address (e.g. ``http://127.0.0.1:8000``); ``api_key``: a key from
    ``iprox keys create`` (default: the ``IPROX_API_KEY`` environment variable).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        base_url = base_url or os.environ.get("IPROX_URL") or "http://127.0.0.1:8000"
        api_key = api_key or os.environ.get("IPROX_API_KEY")
        if not api_key:
            raise ValueError("an API key is needed: pass api_key or set IPROX_API_KEY")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "iprox-client/0.1"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport ---------------------------------------------------------------------------

    def _delay(self, attempt: int, hint: float | None) -> float:
        own = min(self.max_backoff, self.backoff * 2**attempt)
        return min(self.max_backoff, hint) if hint is not None else own

    def _send(
        self, method: str, path: str, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, retried on 429/503 and connection errors; an error status raises."""
        attempt = 0
        while True:
            try:
                req = self._http.build_request(method, path, **kwargs)
                resp = self._http.send(req, stream=stream)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise ConnectionFailed(
                        f"{method} {path}: {type(exc).__name__}: {exc} "
                        f"(after {attempt + 1} attempts)"
                    ) from exc
                self._sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if resp.status_code < 400:
                return resp
            if stream:
                resp.read()
                resp.close()
            hint = _retry_after(resp)
            if resp.status_code in RETRY_STATUSES and attempt < self.retries:
                self._sleep(self._delay(attempt, hint))
                attempt += 1
                continue
            raise api_error(resp.status_code, _problem(resp), hint)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    # -- jobs ---------------------------------------------------------------------------------

    def submit(
        self,
        request: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        """``POST /jobs`` with ``request`` (a dict as the API takes it) and/or keyword fields
        (``kind=``, ``dataset_uri=``, ...). The Idempotency-Key is ``idempotency_key`` or a fresh
        UUID, the same for every retry of this call. For a ``dry_run`` use :meth:`estimate`."""
        body = {**(request or {}), **fields}
        key = idempotency_key or str(uuid.uuid4())
        data = self._json("POST", "/jobs", json=body, headers={"Idempotency-Key": key})
        return Job.model_validate(data)

    def estimate(self, request: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """``POST /jobs`` with ``dry_run``: the predicted samples, tokens and seconds per stage
        (``stages``, ``total_seconds``, ``calibration``); nothing is stored or queued."""
        body = {**(request or {}), **fields, "dry_run": True}
        answer: dict[str, Any] = self._json("POST", "/jobs", json=body)
        return answer

    def get(self, job_id: str) -> Job:
        """``GET /jobs/{id}``."""
        return Job.model_validate(self._json("GET", f"/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """``POST /jobs/{id}/cancel``: a queued job ends at once, a running one at its next
        batch (keeping its scores)."""
        return Job.model_validate(self._json("POST", f"/jobs/{job_id}/cancel"))

    def jobs(
        self, *, status: list[str] | None = None, metadata: Mapping[str, str] | None = None
    ) -> Iterator[Job]:
        """Every job of the key's tenant, newest first, following the pages."""
        params: dict[str, Any] = {"status": status or []}
        params.update({f"metadata.{k}": v for k, v in (metadata or {}).items()})
        cursor: str | None = None
        while True:
            page = self._json(
                "GET", "/jobs", params=params | ({"cursor": cursor} if cursor else {})
            )
            yield from (Job.model_validate(j) for j in page["items"])
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not cursor:
                return

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
        *,
        poll_interval: float = 2.0,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll until the job ends; return it. ``on_progress`` hears every change of status,
        stage or progress. Raises :class:`WaitTimeout` after ``timeout`` seconds, and
        :class:`JobFailed` when the job failed or was cancelled (unless ``raise_on_failure`` is
        False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[Any, ...] | None = None
        while True:
            job = self.get(job_id)
            now = (job.status, job.stage, job.progress.done, job.progress.total)
            if on_progress is not None and now != seen:
                on_progress(job)
            seen = now
            if job.done:
                if raise_on_failure and job.status != "succeeded":
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job, timeout or 0.0)
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            self._sleep(pause)

    def events(self, job_id: str, cursor: str | None = None) -> Iterator[Event]:
        """The job's events (status, stage, metrics, webhook deliveries), oldest first, from
        ``cursor`` (a page's ``next_cursor``; None: the first), following the pages."""
        yield from (
            Event.model_validate(e) for e in self._pages(f"/jobs/{job_id}/events", {}, cursor)
        )

    def scores(self, job_id: str, order: Literal["index", "rank"] = "index") -> Iterator[Score]:
        """Every score of the job, by pool index or best first, following the pages."""
        params = {"limit": 1000, "order": order}
        yield from (Score.model_validate(s) for s in self._pages(f"/jobs/{job_id}/scores", params))

    def _pages(
        self, path: str, params: dict[str, Any], cursor: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The items of every page of a list (``cursor`` + ``has_more``)."""
        while True:
            page = self._json("GET", path, params=params | ({"cursor": cursor} if cursor else {}))
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not cursor:
                return

    def _download(self, path: str, params: dict[str, Any], dest: str | Path) -> Path:
        out = Path(dest)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        resp = self._send("GET", path, params=params, stream=True)
        try:
            with tmp.open("wb") as fh:
                for chunk in resp.iter_bytes():
                    fh.write(chunk)
            os.replace(tmp, out)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"GET {path}: the download broke off ({exc})") from exc
        finally:
            resp.close()
            tmp.unlink(missing_ok=True)
        return out

    def download_subset(
        self,
        job_id: str,
        path: str | Path,
        format: SubsetFormat = "jsonl",
        *,
        top_k: int | None = None,
    ) -> Path:
        """Save the job's ranked subset (best first; ``top_k`` only the best) to ``path`` as
        JSONL, a JSON list or Parquet; the file appears only once it is whole."""
        params: dict[str, Any] = {"format": format}
        if top_k is not None:
            params["top_k"] = top_k
        return self._download(f"/jobs/{job_id}/subset", params, path)

    def download_scores(
        self,
        job_id: str,
        path: str | Path,
        format: ScoreFormat = "jsonl",
        *,
        order: Literal["index", "rank"] = "rank",
    ) -> Path:
        """Save every score of the job to ``path`` (JSONL, CSV or Parquet)."""
        return self._download(f"/jobs/{job_id}/scores", {"format": format, "order": order}, path)


__all__ = ["ApiError", "Client"]
