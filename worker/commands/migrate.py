"""``iprox migrate``: bring the configured database to the newest schema (a deploy step)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply database migrations (IPROX_DATABASE_URL)")
    p.add_argument("--revision", default="head", help="target revision (default head)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.admin import migrate

    print(f"iprox migrate: {migrate(args.revision)}")
    return 0
