"""Tables, JSON rows and the plot for ``scripts/bench_downstream.py``.

Run as a script it rebuilds the table and the plot from a saved ``downstream.json`` (after a
change to the report, without rerunning the benchmark):

    .venv/bin/python scripts/downstream_report.py docs/bench/downstream.json \
        --command "python scripts/bench_downstream.py ..." --wall-seconds 5400

The paired gain compares a selector with random selection on the same evaluation examples:
per example, random's NLL (mean over random's seeds) minus the selector's (mean over its seeds),
then the mean and standard error of those differences. Example difficulty cancels in the pairs,
so this SE is far smaller than the SE of either NLL alone: it is what "beyond the noise" is
judged by. The SE counts example noise only; seed-to-seed variation shows in ``seed SE``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from worker.engine.math.nll import mean_and_se

SECTION = "downstream"
ROOT = Path(__file__).resolve().parents[1]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (task, selector, rho): mean over seeds; ``seed_se`` = SE across seeds."""
    groups: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["selector"], r["rho"]), []).append(r)
    lines = []
    for (task, selector, rho), rs in groups.items():
        nll, seed_se = mean_and_se([r["nll"] for r in rs])
        accs = [r["accuracy"] for r in rs if r.get("accuracy") is not None]
        costs = [r["selection_seconds"] for r in rs if r.get("selection_seconds") is not None]
        lines.append(
            {"task": task, "selector": selector, "rho": rho, "seeds": len(rs), "nll": nll,
             "nll_se": mean_and_se([r["nll_se"] for r in rs])[0], "seed_se": seed_se,
             "accuracy": sum(accs) / len(accs) if accs else None,
             "proxy_params": rs[0].get("proxy_params"),
             "selection_seconds": sum(costs) / len(costs) if costs else None,
             "gsm8k_share": rs[0].get("gsm8k_share")}
        )  # fmt: skip
    for line in lines:
        random = next(x for x in lines if x["task"] == line["task"] and x["selector"] == "random")
        line["gain_vs_random"] = random["nll"] - line["nll"]
        line["paired_gain"], line["paired_se"] = _paired(
            rows, line["task"], ("random", None), (line["selector"], line["rho"])
        )
    return lines


def _per_example(rows: list[dict[str, Any]], task: str, key: tuple[str, Any]) -> list[float]:
    """Per-example NLL of one selector on one task, averaged over its seeds."""
    runs = [
        r["per_example_nll"]
        for r in rows
        if r["task"] == task and (r["selector"], r["rho"]) == key and r.get("per_example_nll")
    ]
    return [sum(xs) / len(xs) for xs in zip(*runs, strict=True)] if runs else []


def _paired(
    rows: list[dict[str, Any]], task: str, base: tuple[str, Any], other: tuple[str, Any]
) -> tuple[float | None, float | None]:
    """Mean and SE over examples of ``base`` NLL minus ``other`` NLL (None without the data)."""
    if other == base:
        return None, None
    a, b = _per_example(rows, task, base), _per_example(rows, task, other)
    if not a or len(a) != len(b) or len(a) < 2:
        return None, None
    return mean_and_se([x - y for x, y in zip(a, b, strict=True)])


def _fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _gain(x: dict[str, Any]) -> str:
    if x.get("paired_gain") is None:
        return f"{x['gain_vs_random']:+.4f}"
    return f"{x['paired_gain']:+.4f} ± {x['paired_se']:.4f}"


def markdown(
    lines: list[dict[str, Any]], command: str, s: dict[str, Any], rows: list[dict[str, Any]]
) -> str:
    head = (
        "| task | selector | rho | seeds | proxy params | selection s | eval NLL ± SE (± seed SE) "
        "| accuracy | gain vs random, paired ± SE (nats) | GSM8K share of selection |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {x['task']} | {x['selector']} | {_fmt(x['rho'], '.1f')} | {x['seeds']} "
        f"| {_fmt(x['proxy_params'], ',')} | {_fmt(x['selection_seconds'], '.0f')} "
        f"| {x['nll']:.4f} ± {x['nll_se']:.4f}" + (f" (± {x['seed_se']:.4f})" if x["seeds"] > 1 else "")
        + f" | {_fmt(x['accuracy'], '.3f')} | {_gain(x)} | {_fmt(x['gsm8k_share'], '.2f')} |\n"
        for x in lines
    )  # fmt: skip
    ft = sum(r.get("finetune_seconds", 0.0) for r in rows)
    ev = sum(r.get("eval_seconds", 0.0) for r in rows)
    warm = max((r.get("warmup_seconds", 0.0) for r in rows), default=0.0)
    return (
        "## Downstream: fine-tune on the selection (`scripts/bench_downstream.py`)\n\n"
        f"Command: `{command}`\n\nMachine: 2-core CPU, no GPU (torch {torch.__version__}).\n\n"
        f"Sizes: `{json.dumps(s)}`. Each selector keeps {s['fraction']:.0%} of the pool; the "
        "target is fully fine-tuned on it with one recipe (seed 0) and evaluated by the per-token "
        "NLL of the reference answers (mean ± SE over evaluation examples; ± seed SE across "
        "selector seeds where there are several) and, on MMLU, letter accuracy. Selection seconds = "
        "proxy build + scoring of that task (the MMLU run reuses the pool gradients stored by the "
        "GSM8K run of the same selector). 'no-finetune' is the target before fine-tuning. "
        f"Selectors score with the target after a warm-up on a random {s['warmup_fraction']:.0%} of "
        f"the pool ({warm:.0f} s, not counted in selection seconds; none when 0%). The gain vs "
        "random is paired over the same evaluation examples (see scripts/downstream_report.py); "
        "its SE reflects example noise only. Total "
        f"fine-tuning {ft:.0f} s, evaluation {ev:.0f} s.\n\n" + head + body
    )


def plot(lines: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({x["task"] for x in lines})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for x in (x for x in lines if x["task"] == task and x["selection_seconds"] is not None):
            label = x["selector"] + (f" ρ={x['rho']}" if x["rho"] is not None else "")
            err = max(x["nll_se"], x["seed_se"])
            ax.errorbar(x["selection_seconds"], x["nll"], yerr=err, fmt="o", capsize=3)
            ax.annotate(label, (x["selection_seconds"], x["nll"]), fontsize=7)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set(title=task, xlabel="selection cost (s, proxy build + scoring)", ylabel="eval NLL")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_section(markdown_path: Path, text: str) -> None:
    doc = markdown_path.read_text(encoding="utf-8")
    start, end = f"<!-- bench:{SECTION}:start -->", f"<!-- bench:{SECTION}:end -->"
    a, b = doc.index(start) + len(start), doc.index(end)
    markdown_path.write_text(doc[:a] + "\n" + text + doc[b:], encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys
    from dataclasses import asdict

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("rows", type=Path, help="downstream.json written by bench_downstream.py")
    p.add_argument("--command", required=True, help="the command that produced the rows")
    p.add_argument("--wall-seconds", type=float, default=None, help="the run's wall time")
    p.add_argument("--quick", action="store_true", help="the rows came from a --quick run")
    p.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from downstream_sizes import FULL, QUICK

    rows = json.loads(args.rows.read_text(encoding="utf-8"))
    lines = summarise(rows)
    sizes = asdict(QUICK if args.quick else FULL)
    text = markdown(lines, args.command, sizes, rows)
    if args.wall_seconds is not None:
        text += f"\nWall time of the whole run: {args.wall_seconds:.0f} s.\n"
    print(text)
    write_section(args.markdown, text)
    plot(lines, args.rows.with_name("downstream.png"))


if __name__ == "__main__":
    main()
