"""``iprox serve``'s local API key: from IPROX_API_KEY, else created once and kept owner-only."""

from __future__ import annotations

import stat
from pathlib import Path

from worker.cli import build_parser
from worker.commands.serve import local_key


def test_local_key_is_created_once_and_kept_private(tmp_path: Path) -> None:
    key, created = local_key(tmp_path / "home", None)
    assert created and key.startswith("iprox_")
    path = tmp_path / "home" / "api_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert local_key(tmp_path / "home", None) == (key, False)
    assert local_key(tmp_path / "home", "iprox_given") == ("iprox_given", False)


def test_serve_is_a_command() -> None:
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.host, args.port, args.concurrency, args.no_worker) == ("0.0.0.0", 9000, 1, False)
