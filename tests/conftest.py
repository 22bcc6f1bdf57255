"""Shared fixtures, and the rule that nothing is skipped silently in CI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# No test reaches the Hugging Face hub: hub ids resolve from fake caches the tests build.
os.environ["HF_HUB_OFFLINE"] = "1"
from tests.netguard import ConnectLog, loopback_only

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Postgres/Redis fixtures shared by the service and worker tiers (requested by name only there).
pytest_plugins = ["tests.service.plugin"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[Any]:
    """Under CI=true a skipped test is a failure: CI has every service and data set."""
    outcome: Any = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run everything: {reason}"


@pytest.fixture(autouse=True)
def net_guard() -> Iterator[ConnectLog]:
    """No test connects outside the loopback range (the guard refuses before connecting)."""
    with loopback_only() as log:
        yield log


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def write_jsonl(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a list of dicts as JSONL under tmp_path and return the path."""

    def _write(rows: list[dict[str, Any]], name: str = "data.jsonl") -> Path:
        p = tmp_path / name
        p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return p

    return _write
