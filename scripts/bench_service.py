"""Benchmark: the service's own overheads, on Postgres and SQLite (no model involved).

Measures (a) the database cost of persisting one scoring batch (``state.record_scores``: lock the
job row, upsert the batch's scores, recount, heartbeat), which every engine batch pays, and
(b) API latencies in-process (TestClient): POST /jobs (validation + insert + commit + enqueue to a
real Redis), GET /jobs (one page of 50) and GET /jobs/{id}/scores (one page of 1000).

Writes a table into the ``bench:service`` section of docs/benchmarks.md.

With ``--load``, instead: an open-loop load test of a real uvicorn process on 127.0.0.1
against Postgres: GET /jobs/{id} offered at fixed rates (default 50/100/200/400 req/s, 10 s
each, 3 runs), reporting p50/p99 latency (from when each request was due) and errors; then a
probe at a low rate after the heaviest load (does it recover?), the connections left idle in
transaction, and how long SIGTERM takes to end the server. Written to ``bench:service-load``.

    .venv/bin/python scripts/bench_service.py                 # sizes below, 3 repeats
    .venv/bin/python scripts/bench_service.py --quick         # smoke run, writes nothing
    .venv/bin/python scripts/bench_service.py --load          # the load test (about 3 min)
    .venv/bin/python scripts/bench_service.py --load --quick  # 2 s per rate, writes nothing
    .venv/bin/python scripts/bench_service.py --load --baseline /tmp/old  # before/after
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PG_ADMIN = os.environ.get(
    "IPROX_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("IPROX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:service:start -->", "<!-- bench:service:end -->"
LOAD_START, LOAD_END = "<!-- bench:service-load:start -->", "<!-- bench:service-load:end -->"


def _write_section(start: str, end: str, section: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    if start in text:
        a, b = text.index(start), text.index(end) + len(end)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote the {start} section of {DOC}")


def _median_ms(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return f"{statistics.median(ms):.2f} / {p95:.2f}"


def bench_record_scores(url: str, samples: int, batch: int) -> list[float]:
    """Seconds per batch of ``batch`` scores persisted through state.record_scores."""
    from sqlalchemy.orm import Session

    from service.auth.keys import get_or_create_tenant
    from service.db import make_engine
    from service.jobs import state
    from service.models import Job, JobKind

    engine = make_engine(url)
    with Session(engine) as s, s.begin():
        tenant = get_or_create_tenant(s, f"bench-{uuid.uuid4().hex[:6]}")
        job = Job(tenant_id=tenant.id, kind=JobKind.SELECT, request={}, request_hash="b")
        s.add(job)
        s.flush()
        state.start(s, job.id)
        job_id = job.id
    times = []
    for a in range(0, samples, batch):
        rows = [(i, f"id{i}", float(i % 97) / 97) for i in range(a, min(a + batch, samples))]
        t0 = time.perf_counter()
        with Session(engine) as s, s.begin():
            state.record_scores(s, job_id, rows)
        times.append(time.perf_counter() - t0)
    engine.dispose()
    return times


def bench_api(requests: int, data_root: Path, model_root: Path) -> dict[str, list[float]]:
    from fastapi.testclient import TestClient

    from service.auth.keys import create_key
    from service.db import session_scope
    from service.jobs import state
    from service.main import create_app

    pool = data_root / "pool.jsonl"
    pool.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) + "\n" for i in range(100))
    )
    (model_root / "m").mkdir(exist_ok=True)
    (model_root / "m" / "config.json").write_text("{}")
    body = {
        "kind": "select",
        "dataset_uri": pool.as_uri(),
        "target_uri": pool.as_uri(),
        "target_model": "m",
        "selection": {"top_k": 10},
        "metadata": {"bench": "yes"},
    }
    with session_scope() as s:
        auth = {"Authorization": f"Bearer {create_key(s, 'bench-api').key}"}
    out: dict[str, list[float]] = {"post": [], "list": [], "scores": []}
    with TestClient(create_app()) as client:
        ids = []
        for _ in range(requests):
            t0 = time.perf_counter()
            r = client.post("/jobs", json=body, headers=auth)
            out["post"].append(time.perf_counter() - t0)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        with session_scope() as s:
            state.start(s, ids[0])
            state.record_scores(s, ids[0], [(i, str(i), 0.5) for i in range(1000)])
        for _ in range(requests):
            t0 = time.perf_counter()
            assert client.get("/jobs", params={"limit": 50}, headers=auth).status_code == 200
            out["list"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = client.get(f"/jobs/{ids[0]}/scores", params={"limit": 1000}, headers=auth)
            out["scores"].append(time.perf_counter() - t0)
            assert len(r.json()["items"]) == 1000
    return out


def _fresh_pg() -> tuple[str, Callable[[], None]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"iprox_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), drop


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=4096, help="scores persisted per run")
    ap.add_argument("--batch", type=int, default=8, help="scores per engine batch")
    ap.add_argument("--requests", type=int, default=100, help="requests per API endpoint")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes; writes nothing")
    ap.add_argument("--load", action="store_true", help="the open-loop load test instead")
    ap.add_argument("--rates", default="50,100,200,400", help="offered req/s (--load)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (--load)")
    ap.add_argument("--runs", type=int, default=3, help="runs per rate (--load)")
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="(--load) also serve another checkout (e.g. `git archive REF | tar -x -C DIR`), "
        "alternating runs with this one so both meet the same machine load",
    )
    ap.add_argument(
        "--baseline-label", default="baseline", help="(--load) how the baseline's rows are named"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="IPROX_NAME=VALUE",
        help="(--load) a setting for the servers, repeatable (e.g. IPROX_API_MAX_INFLIGHT=64)",
    )
    args = ap.parse_args()
    if args.load:
        from bench_load import main as load_main

        return load_main(
            args, _fresh_pg, lambda section: _write_section(LOAD_START, LOAD_END, section)
        )
    if args.quick:
        args.samples, args.requests, args.repeats = 64, 5, 1

    import redis

    from service.migrate import upgrade

    rows: list[tuple[str, str, str]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        pg_url, drop = _fresh_pg()
        try:
            upgrade(pg_url)
            sqlite_url = f"sqlite:///{tmpdir / 'bench.db'}"
            upgrade(sqlite_url)
            for label, url in (("Postgres", pg_url), ("SQLite (WAL)", sqlite_url)):
                times: list[float] = []
                for _ in range(args.repeats):
                    times += bench_record_scores(url, args.samples, args.batch)
                rows.append(
                    (
                        f"persist one batch of {args.batch} scores ({label})",
                        _median_ms(times),
                        f"{len(times)}",
                    )
                )
            (tmpdir / "data").mkdir()
            (tmpdir / "models").mkdir()
            os.environ.update(
                {
                    "IPROX_DATABASE_URL": pg_url,
                    "IPROX_BROKER_URL": REDIS,
                    "IPROX_HOME": str(tmpdir / "home"),
                    "IPROX_DATA_ROOTS": str(tmpdir / "data"),
                    "IPROX_MODEL_ROOTS": str(tmpdir / "models"),
                }
            )
            api: dict[str, list[float]] = {"post": [], "list": [], "scores": []}
            for _ in range(args.repeats):
                for k, v in bench_api(args.requests, tmpdir / "data", tmpdir / "models").items():
                    api[k] += v
            from service.db import get_engine

            get_engine().dispose()
            redis.Redis.from_url(REDIS).flushdb()
            rows.append(
                (
                    "POST /jobs (validate file:// pool, insert, commit, enqueue to Redis)",
                    _median_ms(api["post"]),
                    str(len(api["post"])),
                )
            )
            rows.append(("GET /jobs?limit=50", _median_ms(api["list"]), str(len(api["list"]))))
            rows.append(
                (
                    "GET /jobs/{id}/scores?limit=1000",
                    _median_ms(api["scores"]),
                    str(len(api["scores"])),
                )
            )
        finally:
            drop()
    cmd = "python scripts/bench_service.py " + " ".join(sys.argv[1:])
    table = ["| operation | median / p95 ms | samples |", "|---|---|---|"]
    table += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    section = "\n".join(
        [
            START,
            "## Service overheads (`scripts/bench_service.py`)",
            "",
            f"Command: `{cmd.strip()}`. Machine: {os.cpu_count()}-core CPU shared with other jobs "
            f"(1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at "
            "the end), "
            f"{platform.python_implementation()} {platform.python_version()}, local PostgreSQL and Redis. "
            f"Sizes: {args.samples} scores per run in batches of {args.batch}; {args.requests} requests "
            f"per endpoint; {args.repeats} repeats (all samples pooled).",
            "",
            *table,
            "",
            "Every engine batch pays the first rows once; the API rows are in-process (TestClient),"
            " so they exclude network and uvicorn.",
            END,
        ]
    )
    print("\n".join(table))
    if not args.quick:
        _write_section(START, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
