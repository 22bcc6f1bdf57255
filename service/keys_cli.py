"""The ``keys`` command line (create, list, revoke): declared once for ``iprox keys`` and
``python -m service.admin keys``. Imports nothing but argparse, so ``iprox --help`` stays
light; ``service.admin.run_keys`` runs the parsed action."""

from __future__ import annotations

import argparse


def add_key_commands(keys: argparse.ArgumentParser, prog: str) -> None:
    """The ``keys`` actions on ``keys``; ``prog`` is how the user calls the tool (for hints)."""
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a key for a tenant (created if new)")
    create.add_argument("--tenant", required=True, help="tenant name")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument(
        "--scope",
        choices=("read", "write"),  # service.auth.keys.SCOPES, not imported: argparse only
        default="write",
        help="write: every call (the default); read: GET and HEAD only, so it can list jobs "
        "and download subsets but not submit or cancel jobs (the API answers 403)",
    )
    listing = actions.add_parser(
        "list",
        help="list keys: id, tenant, name, prefix, scope, created, revoked (never the key)",
    )
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    revoke = actions.add_parser(
        "revoke", help="revoke a key by its id: the API refuses it at once (idempotent)"
    )
    revoke.add_argument("key_id", metavar="KEY_ID", help=f"the key's id, from '{prog} keys list'")
