"""``iprox migrate``: bring the configured database to the newest schema (a deploy step)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply database migrations (IPROX_DATABASE_URL)")
    p.add_argument("--revision", default="head", help="target revision (default head)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.migrate import upgrade

    url = get_settings().resolved_database_url
    upgrade(url, args.revision)
    print(f"iprox migrate: {url.split('@')[-1]} at {args.revision}")
    return 0
