"""Admin commands that need no ML engine, so they run in the API image (no torch):

    python -m service.admin migrate [--revision REV]
    python -m service.admin keys create --tenant NAME [--name LABEL] [--scope read|write]
    python -m service.admin keys list [--tenant NAME] [--json]
    python -m service.admin keys revoke KEY_ID

``iprox migrate`` and ``iprox keys ...`` call the same functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from service.auth.keys import KeyInfo, create_key, list_keys, revoke_key
from service.config import get_settings
from service.db import session_scope
from service.errors import NotFound, ValidationFailed
from service.keys_cli import add_key_commands
from service.migrate import upgrade


def migrate(revision: str = "head") -> str:
    """Upgrade the configured database; returns a printable target (no password)."""
    url = get_settings().resolved_database_url
    upgrade(url, revision)
    return f"{url.split('@')[-1]} at {revision}"


def create_api_key(tenant: str, name: str = "", scope: str = "write") -> str:
    """A new key of ``scope`` for ``tenant`` (created if new); the only time the key is shown."""
    with session_scope() as session:
        return create_key(session, tenant, name=name, scope=scope).key


def list_api_keys(tenant: str | None = None, *, as_json: bool = False) -> str:
    """The keys as a table (or JSON): id, tenant, name, prefix, scope, created, revoked; never
    a key."""
    with session_scope() as session:
        keys = list_keys(session, tenant)
    if as_json:
        return json.dumps([asdict(k) for k in keys], default=str, indent=2)
    return _table(keys)


def _table(keys: Sequence[KeyInfo]) -> str:
    header = ("ID", "TENANT", "NAME", "PREFIX", "SCOPE", "CREATED", "REVOKED")
    rows = [header] + [
        (
            k.id,
            k.tenant,
            k.name or "-",
            k.prefix,
            k.scope,
            k.created_at.isoformat(timespec="seconds"),
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-",
        )
        for k in keys
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def revoke_api_key(key_id: str) -> str:
    """Revoke a key (idempotent); raises NotFound for an unknown id. Returns what happened."""
    with session_scope() as session:
        key, newly = revoke_key(session, key_id)
    assert key.revoked_at is not None
    when = key.revoked_at.isoformat(timespec="seconds")
    if newly:
        return f"revoked key {key.id} ({key.prefix}..., tenant {key.tenant}) at {when}"
    return f"key {key.id} ({key.prefix}..., tenant {key.tenant}) was already revoked at {when}"


def run_keys(args: argparse.Namespace, prog: str) -> int:
    """Run a parsed ``keys`` action; an unknown key id or a refused value is exit code 2 with a
    message."""
    try:
        if args.action == "create":
            print(create_api_key(args.tenant, args.name, args.scope))
        elif args.action == "list":
            print(list_api_keys(args.tenant, as_json=args.json))
        else:
            print(revoke_api_key(args.key_id))
    except (NotFound, ValidationFailed) as exc:
        print(f"{prog}: error: {exc.detail}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.admin")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("migrate", help="apply database migrations")
    m.add_argument("--revision", default="head")
    add_key_commands(sub.add_parser("keys", help="API keys"), parser.prog)
    args = parser.parse_args(argv)
    if args.command == "migrate":
        print(f"migrated {migrate(args.revision)}")
        return 0
    return run_keys(args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
