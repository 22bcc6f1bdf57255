"""A fake Hugging Face hub cache, built offline: the layout ``huggingface_hub`` reads
(``models--org--name/{blobs,refs,snapshots/<commit>}``, snapshot files linking to blobs)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def add_to_hub_cache(cache: Path, repo_id: str, source: Path, *, ref: str = "main") -> str:
    """Put the files of the folder ``source`` into ``cache`` as a snapshot of ``repo_id``
    that ``ref`` points at; returns the snapshot's (made-up, content-derived) commit hash."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in source.iterdir() if p.is_file())
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in files:
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(f, blob)
        link = snapshot / f.name
        if not link.exists():
            os.symlink(os.path.relpath(blob, snapshot), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit
