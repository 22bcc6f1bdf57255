"""``iprox-client jobs submit|wait|download|status|cancel`` (also ``iprox jobs ...`` where
iprox-service is installed). ``--url`` / ``IPROX_URL`` and ``--api-key`` / ``IPROX_API_KEY`` say
where and who. Exit codes: 0 done, 1 the job failed or was cancelled, 2 an error (bad request,
unreachable API, timeout)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iprox_client.client import Client, ScoreFormat, SubsetFormat
from iprox_client.errors import IproxError, JobFailed
from iprox_client.models import Job

_SCORE_FORMATS: dict[str, ScoreFormat] = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}
_SUBSET_FORMATS: dict[str, SubsetFormat] = {"jsonl": "jsonl", "json": "json", "parquet": "parquet"}


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key)


def _request(source: str) -> dict[str, Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    body = json.loads(text)
    if not isinstance(body, dict):
        raise ValueError(f"{source}: a job request is a JSON object")
    return body


def _progress(job: Job) -> None:
    stage = f" {job.stage}" if job.stage else ""
    total = f" {job.progress.done}/{job.progress.total}" if job.progress.total else ""
    print(f"{job.id} {job.status}{stage}{total}", file=sys.stderr, flush=True)


def _print(job: Job) -> None:
    print(job.model_dump_json(indent=2))


def _submit(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.submit(_request(args.request), idempotency_key=args.idempotency_key)
        if args.wait:
            job = c.wait(job.id, args.timeout, _progress)
    if args.json or (job.result is not None and job.status == "queued"):
        _print(job)  # a dry run answers its estimate in the result
    else:
        print(job.id)
    return 0


def _wait(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.wait(args.job_id, args.timeout, None if args.quiet else _progress)
    _print(job)
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.get(args.job_id))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.cancel(args.job_id))
    return 0


def _download(args: argparse.Namespace) -> int:
    out = Path(args.path)
    fmt = args.format or {".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(
        out.suffix.lower(), "jsonl"
    )
    with _client(args) as c:
        if args.scores:
            if fmt not in _SCORE_FORMATS:
                raise ValueError(f"scores download as jsonl, csv or parquet, not {fmt}")
            c.download_scores(args.job_id, out, _SCORE_FORMATS[fmt], order="rank")
        else:
            if fmt not in _SUBSET_FORMATS:
                raise ValueError(f"a subset downloads as jsonl, json or parquet, not {fmt}")
            c.download_subset(args.job_id, out, _SUBSET_FORMATS[fmt], top_k=args.top_k)
    print(out)
    return 0


def add_jobs_parser(sub: Any) -> None:
    """Add ``jobs`` and its sub-commands to an argparse sub-parser set."""
    jobs = sub.add_parser("jobs", help="submit, follow and download jobs of an iprox API")
    jobs.add_argument("--url", default=None, help="the API (default: $IPROX_URL or :8000)")
    jobs.add_argument("--api-key", default=None, help="the API key (default: $IPROX_API_KEY)")
    jobs.set_defaults(func=run)
    cmds = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")

    s = cmds.add_parser("submit", help="POST a job request (a JSON file, or - for stdin)")
    s.add_argument("request", help="JSON file of the request body, or - to read stdin")
    s.add_argument("--idempotency-key", default=None, help="default: a fresh UUID")
    s.add_argument("--wait", action="store_true", help="wait for the job to end")
    s.add_argument("--timeout", type=float, default=None, help="seconds --wait may take")
    s.add_argument("--json", action="store_true", help="print the job, not only its id")
    s.add_argument("--dry-run", action="store_true", help="print the cost estimate; submit nothing")
    s.set_defaults(jobs_func=_submit)

    w = cmds.add_parser("wait", help="wait for a job to end; print it")
    w.add_argument("job_id")
    w.add_argument("--timeout", type=float, default=None, help="give up after this many s")
    w.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    w.set_defaults(jobs_func=_wait)

    st = cmds.add_parser("status", help="print a job")
    st.add_argument("job_id")
    st.set_defaults(jobs_func=_status)

    c = cmds.add_parser("cancel", help="cancel a job")
    c.add_argument("job_id")
    c.set_defaults(jobs_func=_cancel)

    d = cmds.add_parser("download", help="save a job's subset (or, with --scores, its scores)")
    d.add_argument("job_id")
    d.add_argument("path", help="the file to write")
    d.add_argument(
        "--format",
        choices=("jsonl", "json", "parquet", "csv"),
        default=None,
        help="default: from the file name (.parquet, .json), else jsonl",
    )
    d.add_argument("--top-k", type=int, default=None, help="only the best top_k records")
    d.add_argument("--scores", action="store_true", help="every score, in rank order")
    d.set_defaults(jobs_func=_download)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``jobs`` command, turning the client's errors into exit codes."""
    try:
        return int(args.jobs_func(args))
    except JobFailed as exc:
        print(f"iprox: {exc}", file=sys.stderr)
        _print(exc.job)
        return 1
    except (IproxError, ValueError, OSError) as exc:
        print(f"iprox: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iprox-client", description=__doc__)
    add_jobs_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
