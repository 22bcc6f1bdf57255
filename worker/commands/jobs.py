"""``iprox jobs submit|wait|status|cancel|download``: the API from a shell, through the Python
client (iprox_client, its own package: ``pip install clients/python``)."""

from __future__ import annotations

import argparse
from typing import Any


def _missing(args: argparse.Namespace) -> int:
    raise SystemExit("iprox jobs needs the client: pip install -e clients/python (iprox-client)")


def register(sub: Any) -> None:
    try:
        from iprox_client.cli import add_jobs_parser
    except ImportError:  # the service installed without its client
        sub.add_parser("jobs", help="(needs iprox-client)").set_defaults(func=_missing)
        return
    add_jobs_parser(sub)
