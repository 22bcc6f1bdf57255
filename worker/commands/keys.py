"""``iprox keys create|list|revoke``: issue, list and revoke API keys (a new key is printed once;
only its hash is stored). ``python -m service.admin keys ...`` runs the same functions without
the engine."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    # Declared here rather than imported from service.admin, which would load SQLAlchemy and
    # FastAPI for every ``iprox --help``.
    p = sub.add_parser("keys", help="manage API keys (create, list, revoke)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a key for a tenant (created if new)")
    create.add_argument("--tenant", required=True, help="tenant name")
    create.add_argument("--name", default="", help="a label for the key")
    listing = actions.add_parser(
        "list", help="list keys: id, tenant, name, prefix, created, revoked (never the key)"
    )
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    revoke = actions.add_parser(
        "revoke", help="revoke a key by its id: the API refuses it at once (idempotent)"
    )
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, from 'iprox keys list'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.admin import run_keys

    return run_keys(args, "iprox")
