"""``iprox``: the help lists every command without importing the engine; each command's module
is imported only when that command runs."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from worker.cli import COMMAND_MODULES, COMMANDS, build_parser


def _registered() -> dict[str, str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for module in COMMAND_MODULES:
        importlib.import_module(f"worker.commands.{module}").register(sub)
    helps = {a.dest: a.help for a in sub._choices_actions}
    return {name: str(helps[name]) for name in sub.choices}


def test_the_command_table_matches_what_the_modules_register() -> None:
    assert _registered() == {name: help_text for name, (_, help_text) in COMMANDS.items()}


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return set(out.stdout.split())


def test_help_imports_neither_torch_nor_a_command_module() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from worker.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "assert 'finetune' in out.getvalue() and 'serve' in out.getvalue()\n"
        "print(' '.join(sys.modules))\n"
    )
    loaded = _modules_after(code)
    assert "torch" not in loaded and "transformers" not in loaded
    assert not any(m.startswith("worker.commands.") for m in loaded)


def test_a_command_loads_only_its_own_module() -> None:
    args = build_parser(["serve", "--port", "9001"]).parse_args(["serve", "--port", "9001"])
    assert args.port == 9001 and args.func.__module__ == "worker.commands.serve"
    code = (
        "import sys\n"
        "from worker.cli import build_parser\n"
        "build_parser(['migrate', '--revision', 'head'])\n"
        "print(' '.join(sys.modules))\n"
    )
    loaded = _modules_after(code)
    assert "worker.commands.migrate" in loaded and "worker.commands.train" not in loaded
    assert "torch" not in loaded


def test_every_command_renders_its_help() -> None:
    # argparse %-formats help strings; a stray % in a config's help text broke one before.
    def walk(parser: argparse.ArgumentParser) -> None:
        assert parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    walk(child)

    walk(build_parser())
