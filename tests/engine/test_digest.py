"""The engine's one pair of SHA-256 helpers."""

from __future__ import annotations

import hashlib
from pathlib import Path

from worker.engine.digest import sha256_file, sha256_path


def test_a_file_digest_is_its_plain_sha256(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * (3 << 20) + b"tail")  # several read chunks
    assert sha256_file(f) == sha256_path(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_a_folder_digest_covers_names_and_bytes_in_order(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("two")
    (tmp_path / "d" / "sub" / "a.txt").write_text("one")
    # Sorted by path: b.txt comes before sub/a.txt; each relative name precedes its bytes.
    expected = hashlib.sha256(b"b.txt" + b"two" + b"sub/a.txt" + b"one").hexdigest()
    assert sha256_path(tmp_path / "d") == expected
    (tmp_path / "d" / "b.txt").rename(tmp_path / "d" / "c.txt")
    assert sha256_path(tmp_path / "d") != expected
