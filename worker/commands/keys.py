"""``iprox keys create|list|revoke``: issue, list and revoke API keys (a new key is printed once;
only its hash is stored). ``python -m service.admin keys ...`` runs the same functions without
the engine."""

from __future__ import annotations

import argparse
from typing import Any

from service.keys_cli import add_key_commands


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="manage API keys (create, list, revoke)")
    add_key_commands(p, "iprox")  # the one declaration, shared with service.admin
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.admin import run_keys

    return run_keys(args, "iprox")
