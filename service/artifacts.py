"""The artifact root: a local folder (the default) or an fsspec URL.

A folder root is written in place, by the worker, and read in place by the API. Under a URL
(``file://``, ``s3://``, ``gs://``, any fsspec protocol) the worker computes in a local working
folder and uploads each finished artifact (a job's subset file, a built proxy's folder) under the
URL; the database records that URL, the API streams from it, and a worker that scores with a
proxy downloads it into a local cache first.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


def is_url(location: str) -> bool:
    """``s3://bucket/x`` or ``file:///x`` rather than a plain path."""
    return "://" in location


def require_backend(url: str) -> None:
    """Raise ValueError unless fsspec can reach ``url``'s protocol here (its package installed),
    so that a missing extra stops a process at start-up rather than a job half way."""
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        fix = (
            f"pip install 'iprox-service[{protocol}]'"
            if protocol in ("s3", "gs")
            else f"install the fsspec implementation of {protocol}://"
        )
        raise ValueError(
            f"IPROX_ARTIFACT_ROOT={url!r} needs fsspec's {protocol!r} back end, which is not "
            f"available here ({fix}): {exc}"
        ) from None


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url)


def upload(local: Path, url: str) -> None:
    """Copy a local file, or a folder's files, to ``url`` (overwriting what is there)."""
    fs, dest = _fs(url)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        target = dest if path == local else posixpath.join(dest, path.relative_to(local).as_posix())
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.put_file(str(path), target)


def download_dir(url: str, dest: Path) -> None:
    """Copy the folder at ``url`` to ``dest``, which appears whole or not at all (a concurrent
    download of the same folder may win; its copy is then kept)."""
    fs, src = _fs(url)
    src = src.rstrip("/")
    files = fs.find(src)
    if not files:
        raise FileNotFoundError(f"{url}: no such folder, or it is empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        for name in files:
            local = tmp / name[len(src) + 1 :]
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(local))
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a local file (what the database records beside an artifact)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def open_binary(location: str) -> IO[bytes]:
    """Open a path or URL for reading; FileNotFoundError when it is not there."""
    if not is_url(location):
        return Path(location).open("rb")
    fs, path = _fs(location)
    if not fs.isfile(path):
        raise FileNotFoundError(location)
    handle: IO[bytes] = fs.open(path, "rb")
    return handle


@dataclass(frozen=True)
class ArtifactRoot:
    """Where artifacts are kept (``root``: a folder or a URL) and where the worker makes them
    (``work``: the root itself when it is a folder)."""

    root: str
    work: Path

    @property
    def remote(self) -> bool:
        return is_url(self.root)

    def location(self, *parts: str) -> str:
        """Where an artifact is kept: a path under a folder root, a URL under a URL root."""
        if self.remote:
            return "/".join([self.root.rstrip("/"), *parts])
        return str(Path(self.root).joinpath(*parts))

    def workspace(self, *parts: str) -> Path:
        """Where the worker makes that artifact (under a folder root: the artifact itself)."""
        return self.work.joinpath(*parts)

    def publish(self, *parts: str) -> str:
        """Make the finished artifact at ``workspace(*parts)`` available at ``location(*parts)``
        (an upload under a URL root, nothing under a folder root); returns the location."""
        location = self.location(*parts)
        if self.remote:
            upload(self.workspace(*parts), location)
        return location
