"""Tables, JSON rows and the plot for ``scripts/bench_downstream.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from worker.engine.math.nll import mean_and_se

SECTION = "downstream"


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
    return lines


def _fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown(
    lines: list[dict[str, Any]], command: str, s: dict[str, Any], rows: list[dict[str, Any]]
) -> str:
    head = (
        "| task | selector | rho | seeds | proxy params | selection s | eval NLL ± SE (± seed SE) "
        "| accuracy | gain vs random (nats) | GSM8K share of selection |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {x['task']} | {x['selector']} | {_fmt(x['rho'], '.1f')} | {x['seeds']} "
        f"| {_fmt(x['proxy_params'], ',')} | {_fmt(x['selection_seconds'], '.0f')} "
        f"| {x['nll']:.4f} ± {x['nll_se']:.4f}" + (f" (± {x['seed_se']:.4f})" if x["seeds"] > 1 else "")
        + f" | {_fmt(x['accuracy'], '.3f')} | {x['gain_vs_random']:+.4f} | {_fmt(x['gsm8k_share'], '.2f')} |\n"
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
        f"the pool ({warm:.0f} s, not counted in selection seconds; none when 0%). Total "
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
