"""The README's quick start: its select job, with the README's own settings on the README's
data (examples/), selects what the README says it does. The job runs through the same task
steps a worker runs (inline), on the smollm2-135m-instruct preset."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.worker.inline import InlineQueue

ROOT = Path(__file__).resolve().parents[2]


def _readme_job(pwd: Path) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location(
        "bench_quickstart", ROOT / "scripts" / "bench_quickstart.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.readme_job(ROOT / "README.md", pwd))


def _claim() -> tuple[int, int]:
    """The README's sentence: "... N of the K selected records are `math-*` ones ..."."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"(\d+) of the (\d+) selected records are\s+the\s+`math-\*`", text)
    assert found is not None, "the README no longer states what the demo selects"
    return int(found.group(1)), int(found.group(2))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the demo itself: minutes on an idle 2-core machine, more under load
def test_the_readme_demo_selects_what_the_readme_says(
    client: TestClient, auth: dict[str, str], svc_roots: dict[str, Path]
) -> None:
    data = svc_roots["data"] / "readme-demo"
    (data / "examples").mkdir(parents=True, exist_ok=True)
    for name in ("pool.jsonl", "target.jsonl"):
        shutil.copyfile(ROOT / "examples" / name, data / "examples" / name)
    body = _readme_job(data)  # $PWD/examples/... under this test's data root
    r = client.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    subset = client.get(f"/jobs/{job_id}/subset", params={"format": "json"}, headers=auth).json()
    math, selected = _claim()
    assert len(subset) == selected == body["selection"]["top_k"]
    ids = [r["id"] for r in subset]
    assert sum(i.startswith("math-") for i in ids) == math, ids
