"""``iprox keys create --tenant NAME``: issue an API key (printed once; stored hashed)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="manage API keys")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a key for a tenant (created if new)")
    create.add_argument("--tenant", required=True, help="tenant name")
    create.add_argument("--name", default="", help="a label for the key")
    create.set_defaults(func=run_create)


def run_create(args: argparse.Namespace) -> int:
    from service.admin import create_api_key

    print(create_api_key(args.tenant, args.name))
    return 0
