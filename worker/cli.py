"""``iprox``: the command line. Each sub-command lives in ``worker/commands/<name>.py``.

A command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` (a
callable taking the parsed namespace and returning an exit code). Modules import torch and the
engine inside their handlers, so ``iprox --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from worker.engine.errors import EngineError

COMMAND_MODULES: tuple[str, ...] = ("train", "proxy", "score", "serve", "migrate", "keys", "jobs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iprox",
        description="Influence-preserving proxies for gradient-based data selection.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"worker.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EngineError as exc:
        print(f"iprox: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iprox: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
