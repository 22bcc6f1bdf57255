"""The ``--load`` part of scripts/bench_service.py: a real uvicorn process on 127.0.0.1 over a
fresh Postgres database, GET /jobs/{id} offered open loop (scripts/openloop.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from openloop import Result, run

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(url: str) -> tuple[str, str]:
    """A tenant's key and one job of it: (key, job id)."""
    from sqlalchemy.orm import Session

    from service.auth.keys import create_key
    from service.db import make_engine
    from service.models import Job, JobKind

    engine = make_engine(url)
    with Session(engine) as s, s.begin():
        key = create_key(s, f"bench-{uuid.uuid4().hex[:6]}")
        job = Job(tenant_id=key.tenant_id, kind=JobKind.SELECT, request={}, request_hash="b")
        s.add(job)
        s.flush()
        job_id = job.id
    engine.dispose()
    return key.key, job_id


def _idle_in_transaction(url: str) -> int:
    from sqlalchemy import text

    from service.db import make_engine

    engine = make_engine(url)
    with engine.connect() as c:
        n = c.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND state = 'idle in transaction'"
            )
        ).scalar_one()
    engine.dispose()
    return int(n)


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("uvicorn exited at start")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("uvicorn did not answer /healthz")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _row(label: str, results: list[Result], cpu_s: float = float("nan")) -> str:
    pooled = Result(rate=results[0].rate, duration_s=sum(r.duration_s for r in results))
    for r in results:
        pooled.latencies_s += r.latencies_s
        for k, v in r.statuses.items():
            pooled.statuses[k] = pooled.statuses.get(k, 0) + v
        for name, v in r.failures.items():
            pooled.failures[name] = pooled.failures.get(name, 0) + v
    p99s = [r.quantile_ms(0.99) for r in results]
    ok = sum(v for k, v in pooled.statuses.items() if 200 <= k < 300)
    shed = pooled.statuses.get(503, 0)
    other = sum(v for k, v in pooled.statuses.items() if not (200 <= k < 300 or k == 503))
    failed = ", ".join(f"{n} {k}" for k, n in sorted(pooled.failures.items())) or "0"
    cpu = cpu_s / pooled.sent * 1000 if pooled.sent else float("nan")
    return (
        f"| {label} | {len(results)} | {pooled.sent} | {ok} | {shed} | {other} | {failed} | "
        f"{pooled.quantile_ms(0.5):.1f} | {pooled.quantile_ms(0.99):.1f} | "
        f"{min(p99s):.1f} - {max(p99s):.1f} | {cpu:.2f} |"
    )


def main(
    args: argparse.Namespace,
    fresh_pg: Callable[[], tuple[str, Callable[[], None]]],
    write: Callable[[str], None],
) -> int:
    from service.migrate import upgrade

    rates = [float(r) for r in args.rates.split(",")]
    duration, runs = (2.0, 1) if args.quick else (args.duration, args.runs)
    load_before = os.getloadavg()[0]
    pg_url, drop = fresh_pg()
    rows: list[str] = []
    notes: list[str] = []
    try:
        upgrade(pg_url)
        key, job_id = _seed(pg_url)
        # This checkout, and with --baseline another one (say `git archive REF | tar -x -C DIR`)
        # served over the same database; runs alternate between them, so that both meet the
        # same machine load.
        roots = [("", ROOT)]
        if args.baseline:
            roots.append((f" ({args.baseline_label})", Path(args.baseline).resolve()))
            notes.append(
                f"Rows marked ({args.baseline_label}) are served from another checkout "
                f"(`--baseline`), with the same settings and database; its runs alternate with "
                "this checkout's, run by run."
            )
        with tempfile.TemporaryDirectory() as tmp:
            servers: list[tuple[str, int, subprocess.Popen[bytes]]] = []
            try:
                for n, (tag, root) in enumerate(roots):
                    port = _free_port()
                    env = {k: v for k, v in os.environ.items() if not k.startswith("IPROX_")} | {
                        "IPROX_DATABASE_URL": pg_url,
                        "IPROX_BROKER_URL": os.environ.get(
                            "IPROX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"
                        ),
                        "IPROX_HOME": str(Path(tmp) / f"home{n}"),
                        "PYTHONPATH": str(root),
                    }
                    env |= dict(kv.split("=", 1) for kv in args.set)
                    cmd = [sys.executable, "-m", "uvicorn", "service.main:app"]
                    cmd += ["--host", "127.0.0.1", "--port", str(port)]
                    cmd += ["--log-level", "warning", "--no-access-log"]
                    cmd += ["--timeout-graceful-shutdown", "10"]
                    servers.append((tag, port, subprocess.Popen(cmd, cwd=root, env=env)))
                headers = {"Authorization": f"Bearer {key}"}
                path = f"/jobs/{job_id}"
                for _, port, server in servers:
                    _wait_healthy(port, server)
                    asyncio.run(run("127.0.0.1", port, path, headers, 20, 1.0))  # warm up
                for rate in rates:
                    results: dict[str, list[Result]] = {tag: [] for tag, _, _ in servers}
                    cpu: dict[str, float] = {tag: 0.0 for tag, _, _ in servers}
                    for _ in range(runs):
                        for tag, port, server in servers:
                            before = _cpu_s(server.pid)
                            res = asyncio.run(run("127.0.0.1", port, path, headers, rate, duration))
                            used = _cpu_s(server.pid) - before
                            results[tag].append(res)
                            cpu[tag] += used
                            load = os.getloadavg()[0]
                            print(
                                _row(f"{rate:g}{tag}", [res], used), f"load {load:.1f}", flush=True
                            )
                            time.sleep(1.0)
                    for tag, _, _ in servers:
                        rows.append(_row(f"{rate:g}{tag}", results[tag], cpu[tag]))
                for tag, port, server in servers:
                    # Straight after the heaviest load: does it answer normally again, by itself?
                    time.sleep(2.0)
                    before = _cpu_s(server.pid)
                    after = asyncio.run(run("127.0.0.1", port, path, headers, 20, 5.0))
                    rows.append(
                        _row(
                            f"20, 2 s after the last run{tag}", [after], _cpu_s(server.pid) - before
                        )
                    )
                notes.append(
                    f"Connections idle in transaction after the runs: {_idle_in_transaction(pg_url)}."
                )
                for tag, port, server in servers:
                    # SIGTERM in the middle of an overload: the server must still exit.
                    top = rates[-1]
                    loader = threading.Thread(
                        target=asyncio.run,
                        args=(run("127.0.0.1", port, path, headers, top, 6.0),),
                    )
                    loader.start()
                    time.sleep(2.0)
                    started = time.monotonic()
                    server.send_signal(signal.SIGTERM)
                    try:
                        code = server.wait(timeout=30)
                        notes.append(
                            f"SIGTERM sent 2 s into a {top:g} req/s load ended the server{tag} in "
                            f"{time.monotonic() - started:.2f} s (exit code {code})."
                        )
                    except subprocess.TimeoutExpired:
                        notes.append(
                            f"SIGTERM under {top:g} req/s did NOT end the server{tag} in 30 s."
                        )
                    loader.join()
            finally:
                for _, _, server in servers:
                    if server.poll() is None:
                        server.kill()
                        server.wait()
    finally:
        drop()
    from service.config import Settings

    # The settings the servers ran with: the defaults, and the --set ones.
    overrides = {
        k.removeprefix("IPROX_").lower(): v for k, v in (kv.split("=", 1) for kv in args.set)
    }
    defaults = Settings.model_construct(**overrides)
    cmd_line = "python scripts/bench_service.py " + shlex.join(sys.argv[1:])
    table = [
        "| offered req/s | runs | sent | 2xx | 503 | other status | no answer | p50 ms | "
        "p99 ms | p99 per run ms | server CPU ms/request |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    section = "\n".join(
        [
            "<!-- bench:service-load:start -->",
            "## API under open-loop load (`scripts/bench_service.py --load`)",
            "",
            f"Command: `{cmd_line.strip()}`. Machine: {os.cpu_count()}-core CPU shared with other "
            f"jobs (1-minute load average {load_before:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end), {platform.python_implementation()} "
            f"{platform.python_version()}; one uvicorn process per checkout (settings: pool "
            f"{defaults.db_pool_size} + {defaults.db_max_overflow} overflow, "
            f"{defaults.api_max_inflight} requests in flight at most) and the load generator on "
            "the same cores, "
            "local PostgreSQL, all on 127.0.0.1. Each run offers GET /jobs/{id} (API key check, "
            f"job row, labels) at a fixed rate for {duration:g} s; latency counts from when a "
            "request was due, so queueing shows; p50/p99 are over 2xx answers of all runs pooled.",
            "",
            *table,
            "",
            "Goal (issue 12): p99 <= 20 ms at 200 req/s. Server CPU ms/request is the uvicorn "
            "process's CPU time over a run divided by the requests sent (503s are cheap, so it "
            "falls when most are shed).",
            "",
            *notes,
            "<!-- bench:service-load:end -->",
        ]
    )
    print("\n".join([*table, "", *notes]))
    if not args.quick:
        write(section)
    return 0
