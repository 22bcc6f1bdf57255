"""Turning a job's dataset URIs into local files the engine can stream.

``file://`` URIs are re-checked against the data roots (the file may have changed since the API
accepted it); ``http(s)://`` goes through the outbound address check (service/outbound.py, at
every redirect hop) and is downloaded with a size cap, per-operation timeouts and a deadline over the
whole download; ``s3://`` and ``gs://``
go through fsspec. Downloads land in the job's artifact folder and are reused on redelivery.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from service.config import Settings
from service.datasets import resolve_file_uri, run_within
from service.errors import ValidationFailed
from service.outbound import OutboundRefused, send_checked
from worker.engine.errors import EngineError

_CHUNK = 1 << 20


class InputError(EngineError):
    """A dataset URI could not be read (gone, unreachable, too large, outside the roots)."""

    code = "dataset_unavailable"


def _download_http(uri: str, field: str, dest: Path, settings: Settings) -> None:
    """GET ``uri`` into ``dest``: at most ``http_max_bytes``, all of it within
    ``http_total_timeout_s``; nothing is left at ``dest`` unless the whole body arrived."""
    tmp = dest.with_suffix(dest.suffix + ".part")
    max_bytes = settings.http_max_bytes

    async def save(resp: httpx.Response) -> None:
        if resp.status_code >= 400:
            raise InputError(f"{field}: {uri}: HTTP {resp.status_code}")
        size = 0
        with tmp.open("wb") as fh:
            # Chunks as they arrive (not gathered to a size): the cap acts on every read.
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise InputError(f"{field}: {uri}: larger than the limit of {max_bytes} bytes")
                fh.write(chunk)

    async def get() -> None:
        async with httpx.AsyncClient(follow_redirects=False, timeout=settings.http_timeout_s) as c:
            resp = await send_checked(c, "GET", uri, settings.outbound)
            try:
                await save(resp)
            finally:
                await resp.aclose()

    total_s = settings.http_total_timeout_s
    try:
        try:
            run_within(total_s, get())
        except TimeoutError:
            raise InputError(
                f"{field}: {uri}: not downloaded within the limit of {total_s:g} s "
                "(IPROX_HTTP_TOTAL_TIMEOUT_S)"
            ) from None
        except OutboundRefused as exc:
            raise InputError(f"{field}: {uri}: refused: {exc}") from None
        except httpx.HTTPError as exc:
            raise InputError(
                f"{field}: {uri}: download failed ({type(exc).__name__}: {exc})"
            ) from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # a partial download is never taken for a whole one


def _download_fsspec(uri: str, field: str, dest: Path, max_bytes: int, total_s: float) -> None:
    """Copy an object-store file (s3://, gs://) into ``dest``, at most ``max_bytes``, within
    ``total_s`` seconds (checked between chunks: one stalled read is bounded by the back end's
    own timeouts, not by this)."""
    import fsspec

    tmp = dest.with_suffix(dest.suffix + ".part")
    size = 0
    deadline = time.monotonic() + total_s
    try:
        try:
            with fsspec.open(uri, "rb") as src, tmp.open("wb") as fh:
                while chunk := src.read(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise InputError(
                            f"{field}: {uri}: larger than the limit of {max_bytes} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise InputError(
                            f"{field}: {uri}: not downloaded within the limit of {total_s:g} s "
                            "(IPROX_HTTP_TOTAL_TIMEOUT_S)"
                        )
                    fh.write(chunk)
        except FileNotFoundError:
            raise InputError(f"{field}: {uri}: no such object") from None
        except (ImportError, OSError, ValueError) as exc:
            raise InputError(f"{field}: {uri}: cannot read ({exc})") from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # a partial download is never taken for a whole one


def local_input(uri: str, field: str, job_dir: Path, settings: Settings) -> Path:
    """A local path holding the data of ``uri`` (downloaded into ``job_dir`` when remote)."""
    scheme = urlsplit(uri).scheme
    if scheme == "file":
        try:
            return resolve_file_uri(uri, settings.data_roots, field)
        except ValidationFailed as exc:
            raise InputError(f"{field}: {exc.detail}") from None
    suffix = Path(urlsplit(uri).path).suffix.lower()
    name = hashlib.sha256(uri.encode()).hexdigest()[:16] + suffix
    dest = job_dir / "inputs" / name
    if dest.is_file():
        return dest  # fetched by an earlier delivery of this task
    dest.parent.mkdir(parents=True, exist_ok=True)
    if scheme in ("http", "https"):
        _download_http(uri, field, dest, settings)
    else:
        _download_fsspec(uri, field, dest, settings.http_max_bytes, settings.http_total_timeout_s)
    return dest
