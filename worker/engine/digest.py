"""SHA-256 of files and folders: what artifacts, stores and caches key on.

One helper per shape (the service has its own for the files it records, since it may not
import the engine): a file by :func:`hashlib.file_digest`, a folder as one digest over its files'
relative names and contents.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_path(path: Path) -> str:
    """:func:`sha256_file` of a file; of a folder, one digest over its files (sorted, each
    relative name then its bytes), so renaming a file changes it too."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            # One digest over several files: file_digest hashes one file alone.
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
