"""How long ``iprox --help`` takes, now that the command line imports only the module of the
command it runs, beside the eager parser that imports every command module (what ``iprox
--help`` did before: 13-17 s on a loaded 2-core machine, most of it torch and transformers).

Each row is a fresh interpreter, run ``--repeats`` times; the table reports the median, min and
max wall time and the load average at the start. Writes the ``bench:cli`` section of
docs/benchmarks.md (``--no-write`` only prints)::

    .venv/bin/python scripts/bench_cli.py [--repeats 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:cli:start -->", "<!-- bench:cli:end -->"
IPROX = [sys.executable, "-m", "worker.cli"]

CASES: list[tuple[str, list[str]]] = [
    ("`iprox --help` (lazy: no command module)", [*IPROX, "--help"]),
    ("`iprox serve --help` (the serve module only)", [*IPROX, "serve", "--help"]),
    (
        "`iprox proxy build --help` (imports the proxy config, hence torch)",
        [*IPROX, "proxy", "build", "--help"],
    ),
    (
        "eager parser, every command module (the old `iprox --help`)",
        [sys.executable, "-c", "from worker.cli import build_parser; build_parser().format_help()"],
    ),
]


def _time(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def measure(repeats: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for label, cmd in CASES:
        _time(cmd)  # warm the page cache: every row then starts from the same state
        times = [_time(cmd) for _ in range(repeats)]
        rows.append(
            {
                "case": label,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
            }
        )
        print(f"{label}: median {statistics.median(times):.3f} s", flush=True)
    return rows


def section(rows: list[dict[str, object]], repeats: int, load: tuple[float, float, float]) -> str:
    lines = [
        START,
        "## Command-line start-up (`scripts/bench_cli.py`)",
        "",
        f"Command: `{shlex.join(['.venv/bin/python', 'scripts/bench_cli.py', '--repeats', str(repeats)])}`. "
        f"A fresh interpreter per run, {repeats} runs per row after one warm-up run; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the start "
        "(the machine is shared, so absolute times move with the load; the rows ran back to back).",
        "",
        "| case | median s | min s | max s |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} |")
    lines += [
        "",
        "`iprox --help` lists the commands from a table in `worker/cli.py` and imports no command "
        "module; a command imports only its own module (a test checks the table against what the "
        "modules register, and that `--help` imports neither torch nor any command module).",
        END,
    ]
    return "\n".join(lines)


def write(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    if START in doc:
        before, rest = doc.split(START, 1)
        after = rest.split(END, 1)[1]
        doc = before + text + after
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    load = os.getloadavg()
    text = section(measure(args.repeats), args.repeats, load)
    print(text)
    if not args.no_write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
