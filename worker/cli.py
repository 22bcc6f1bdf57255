"""``iprox``: the command line. Each sub-command lives in ``worker/commands/<name>.py``.

A command module exposes ``register(subparsers)``, which adds its parsers and sets ``func`` (a
callable taking the parsed namespace and returning an exit code). Importing a command module
can be slow (its parser reads defaults from the engine's config dataclasses, whose packages
import torch), so ``main`` imports only the module of the command being run; ``iprox --help``
lists the commands from the table below without importing any (scripts/bench_cli.py measures
it). A test checks the table against what the modules register.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from worker.engine.errors import EngineError

COMMANDS: dict[str, tuple[str, str]] = {
    "finetune": ("train", "fine-tune a model (full or LoRA) on a record file, saving checkpoints"),
    "warmup": (
        "train",
        "briefly fine-tune on a random slice of the pool, keeping checkpoints for TracIn",
    ),
    "evaluate": ("train", "per-example NLL of reference answers (mean +- SE), and MMLU accuracy"),
    "proxy": ("proxy", "build influence-preserving proxies"),
    "score": (
        "score",
        "score a training pool against target tasks by their gradients (exact TracIn by default)",
    ),
    "select": ("score", "build a proxy, score the pool and write the selected records"),
    "serve": ("serve", "run the API and a worker (embedded default)"),
    "migrate": ("migrate", "apply database migrations (IPROX_DATABASE_URL)"),
    "keys": ("keys", "manage API keys (create, list, revoke)"),
    "jobs": ("jobs", "submit, follow and download jobs of an iprox API"),
}
"""Command name -> (module under worker.commands, its one-line help)."""

COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(m for m, _ in COMMANDS.values()))


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the module of the command it names is imported (the
    other commands are listed by name and help), without, every module registers."""
    parser = argparse.ArgumentParser(
        prog="iprox",
        description="Influence-preserving proxies for gradient-based data selection.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if argv is None:
        modules = list(COMMAND_MODULES)
    else:
        named = next((a for a in argv if not a.startswith("-")), None)
        modules = [COMMANDS[named][0]] if named in COMMANDS else []
    for module in modules:
        importlib.import_module(f"worker.commands.{module}").register(sub)
    for name, (_, help_text) in COMMANDS.items():
        if name not in sub.choices:  # listed in --help; never parsed (its module is not loaded)
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_in)
    args = parser.parse_args(args_in)
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
