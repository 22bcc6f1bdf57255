"""Admin commands that need no ML engine, so they run in the API image (no torch):

    python -m service.admin migrate [--revision REV]
    python -m service.admin keys create --tenant NAME [--name LABEL]

``iprox migrate`` and ``iprox keys create`` call the same functions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.auth.keys import create_key
from service.config import get_settings
from service.db import session_scope
from service.migrate import upgrade


def migrate(revision: str = "head") -> str:
    """Upgrade the configured database; returns a printable target (no password)."""
    url = get_settings().resolved_database_url
    upgrade(url, revision)
    return f"{url.split('@')[-1]} at {revision}"


def create_api_key(tenant: str, name: str = "") -> str:
    """A new key for ``tenant`` (created if new); the only time the key is shown."""
    with session_scope() as session:
        return create_key(session, tenant, name=name).key


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.admin")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("migrate", help="apply database migrations")
    m.add_argument("--revision", default="head")
    keys = sub.add_parser("keys", help="API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        print(f"migrated {migrate(args.revision)}")
    else:
        print(create_api_key(args.tenant, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
