"""The README's quick-start demo, timed: ``iprox serve`` on a fresh ``IPROX_HOME`` (the model
cache under ``IPROX_CACHE_DIR`` stays warm, as for a user's second run), the README's select
job on ``examples/``, wall time from submission to ``succeeded``, seconds per stage from the
job's events, and how many of the selected records are ``math-*`` ones.

The job body is read from README.md's quick start (the ``-d "{...}"`` of its ``curl -X POST``),
so the numbers are those of what the README tells users to run; ``--proxy KEY=VALUE`` overrides
a proxy setting to try others. Writes the ``bench:quickstart`` section of docs/benchmarks.md
unless ``--no-write``::

    .venv/bin/python scripts/bench_quickstart.py [--repeats 3] [--proxy align_steps=2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.benchdoc import write_section  # noqa: E402


def readme_job(readme: Path = ROOT / "README.md", pwd: Path = ROOT) -> dict[str, Any]:
    """The job body of the README's quick start, with ``$PWD`` replaced by ``pwd``."""
    text = readme.read_text(encoding="utf-8")
    found = re.search(r'curl -s -X POST [^\n]*\\\n[^\n]*-d "(\{.*?\n\s*\})"', text, re.S)
    if found is None:
        raise ValueError("no POST /jobs body in the README's quick start")
    body = found.group(1).replace('\\"', '"').replace("$PWD", str(pwd))
    return dict(json.loads(body))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _home_cpu_s(home: str) -> float:
    """CPU seconds (user + system) used so far by the live processes whose environment has
    ``IPROX_HOME=home``: iprox serve, its worker and the worker's pool (the worker runs in a
    session of its own, so a process group would miss it), from /proc."""
    needle = f"IPROX_HOME={home}".encode()
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (after state ppid pgrp ...)
    return total / os.sysconf("SC_CLK_TCK")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    key = "iprox_bench-quickstart"
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IPROX_")}
        env |= {"IPROX_HOME": home, "IPROX_API_KEY": key, "IPROX_LOG_FORMAT": "text"}
        if os.environ.get("IPROX_CACHE_DIR"):
            env["IPROX_CACHE_DIR"] = os.environ["IPROX_CACHE_DIR"]
        port = _free_port()
        log = Path(home) / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        auth = {"Authorization": f"Bearer {key}"}
        try:
            started = time.monotonic()
            deadline = started + 120
            while True:  # the README waits for /readyz and then for the worker
                try:
                    r = client.get("/readyz", params={"min_workers": 1})
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"iprox serve did not come up:\n{log.read_text()}")
                time.sleep(0.5)
            startup = time.monotonic() - started
            cpu0 = _home_cpu_s(home)
            t0 = time.monotonic()
            r = client.post("/jobs", json=body, headers=auth)
            r.raise_for_status()
            job_id = r.json()["id"]
            while True:
                job = client.get(f"/jobs/{job_id}", headers=auth).json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(f"job still {job['status']} after {timeout_s} s")
                time.sleep(1)
            wall = time.monotonic() - t0
            cpu = _home_cpu_s(home) - cpu0
            events = client.get(
                f"/jobs/{job_id}/events", params={"limit": 1000}, headers=auth
            ).json()["items"]
            subset = []
            if job["status"] == "succeeded":
                subset = client.get(
                    f"/jobs/{job_id}/subset", params={"format": "json"}, headers=auth
                ).json()
        finally:
            client.close()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    marks = [
        (e["message"], datetime.fromisoformat(e["created_at"]))
        for e in events
        if e["type"] == "stage"
    ]
    finished = datetime.fromisoformat(job["finished_at"]) if job["finished_at"] else None
    stages: dict[str, float] = {}
    for i, (name, at) in enumerate(marks):
        until = marks[i + 1][1] if i + 1 < len(marks) else finished
        if until is not None:
            stages[name] = stages.get(name, 0.0) + (until - at).total_seconds()
    losses = [
        e["data"]["metrics"]
        for e in events
        if e["type"] == "progress" and (e.get("data") or {}).get("metrics")
    ]
    return {
        "status": job["status"],
        "error": job["error"],
        "startup_s": startup,
        "wall_s": wall,
        "cpu_s": cpu,
        "stages_s": stages,
        "selected_ids": [r.get("id") for r in subset],
        "math_in_top": sum(1 for r in subset if str(r.get("id", "")).startswith("math-")),
        "alignment_metrics": losses,
    }


def section(
    body: dict[str, Any],
    results: list[tuple[tuple[float, float, float], dict[str, Any]]],
    command: str,
) -> str:
    rows = []
    for i, (load, result) in enumerate(results, 1):
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in result["stages_s"].items())
        rows.append(
            f"| {i} | {load[0]:.1f} | {result['status']} | {result['startup_s']:.0f} s | "
            f"{result['wall_s']:.0f} s | {result['startup_s'] + result['wall_s']:.0f} s | "
            f"{result['cpu_s']:.0f} | {stages} | "
            f"{result['math_in_top']} of {len(result['selected_ids'])} |"
        )
    selections = "; ".join(
        f"run {i}: {', '.join(map(str, r['selected_ids']))}" for i, (_, r) in enumerate(results, 1)
    )
    return "\n".join(
        [
            "## Quick start, timed (`scripts/bench_quickstart.py`)",
            "",
            f"Command: `{command}`. The README's select job on `examples/` (36 records, 6 target "
            "problems) through `iprox serve` on a fresh `IPROX_HOME` each run, the model cache "
            f"warm; {os.cpu_count()} CPUs (a shared machine: the load average at each run's start "
            "is in the table). Start-up is `iprox serve` until `/readyz?min_workers=1` answers "
            "200 (the README's `until curl` loop); the job is submission to `succeeded`.",
            "",
            f"Settings: `proxy` {json.dumps(body.get('proxy'))}, `scorer` "
            f"{json.dumps(body.get('scorer'))}, `selection` {json.dumps(body.get('selection'))}.",
            "",
            "| run | load | status | start-up | job | start-up + job | CPU s (serve, worker, "
            "pool) | stages | math-* in the selection |",
            "|---:|---:|---|---:|---:|---:|---:|---|---:|",
            *rows,
            "",
            f"Selected, best first: {selections}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--proxy", action="append", default=[], help="KEY=VALUE over the README's")
    p.add_argument("--scorer", action="append", default=[], help="KEY=VALUE over the README's")
    p.add_argument("--repeats", type=int, default=1, help="runs, each on a fresh IPROX_HOME")
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    body = readme_job()
    for part, items in (("proxy", args.proxy), ("scorer", args.scorer)):
        for item in items:
            k, _, v = item.partition("=")
            body[part][k] = _value(v)
    results = []
    for _ in range(args.repeats):
        load = os.getloadavg()
        result = run(body, args.timeout_s)
        print(json.dumps(result, indent=2, default=str))
        results.append((load, result))
    command = shlex.join(
        [".venv/bin/python", "scripts/bench_quickstart.py", *(argv or sys.argv[1:])]
    )
    text = section(body, results, command)
    print(text)
    if not args.no_write and not (args.proxy or args.scorer):
        write_section("quickstart", text)
    return 0 if all(r["status"] == "succeeded" for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
