"""What the fidelity report adds to a proxy build, on SmolLM2-135M-Instruct.

Builds one proxy (IPSVD, rho 0.5 by default, no alignment: the report's cost does not depend on
it) from a seeded Dolly + GSM8K pool with a GSM8K target set, with the report at its defaults
(64 calibration records, 32 target records), and prints the build's phase timings beside the
report's: its total seconds, the target's and the proxy's seconds per calibration sample, and
its figures (Spearman, top-10% overlap). One run; the machine's load average is recorded before
and after, since the 2-core machine is shared.

Writes a table into the ``bench:fidelity-cost`` section of docs/benchmarks.md and the raw
numbers into docs/bench/fidelity_cost.json (``--no-write``: print only).

    .venv/bin/python scripts/bench_fidelity_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.engine.data import load_records  # noqa: E402
from worker.engine.models import load_model  # noqa: E402
from worker.engine.proxy import ProxyConfig, build_proxy  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SECTION = "fidelity-cost"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pool-size", type=int, default=240, help="pool records (Dolly + GSM8K)")
    p.add_argument("--gsm-fraction", type=float, default=0.1, help="GSM8K share of the pool")
    p.add_argument("--gsm-targets", type=int, default=32, help="GSM8K test records (targets)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--method", default="ipsvd")
    p.add_argument("--probe-samples", type=int, default=64)
    p.add_argument("--align-steps", type=int, default=0)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fidelity-samples", type=int, default=64)
    p.add_argument("--fidelity-targets", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="data slice seed")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs untouched")
    return p.parse_args()


def make_files(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """A seeded pool file and a GSM8K target file under ``work``."""
    rng = random.Random(args.seed)
    dolly = json.loads((DATA / "dolly" / "dolly_3k.json").read_text(encoding="utf-8"))
    gsm_train = [json.loads(x) for x in (DATA / "gsm8k" / "train.jsonl").open(encoding="utf-8")]
    gsm_test = [json.loads(x) for x in (DATA / "gsm8k" / "test.jsonl").open(encoding="utf-8")]
    n_gsm = round(args.gsm_fraction * args.pool_size)
    rows = rng.sample(dolly, args.pool_size - n_gsm) + rng.sample(gsm_train, n_gsm)
    rng.shuffle(rows)
    pool, target = work / "pool.jsonl", work / "gsm8k_target.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    picked = rng.sample(gsm_test, args.gsm_targets)
    target.write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
    return pool, target


def _progress(stage: str, done: int, total: int) -> None:
    if done == total or done == 0:
        print(f"{time.strftime('%H:%M:%S')} {stage} {done}/{total}", flush=True)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_fidelity_"))
    pool, target_file = make_files(args, work)
    target = load_model(args.model)
    config = ProxyConfig(
        method=args.method,
        sparsity=args.sparsity,
        probe_samples=args.probe_samples,
        align_steps=args.align_steps,
        max_length=args.max_length,
        batch_size=args.batch_size,
        fidelity_samples=args.fidelity_samples,
        fidelity_targets=args.fidelity_targets,
    )
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proxy = build_proxy(
        target, load_records(pool), config, targets=load_records(target_file), progress=_progress
    )
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    m = proxy.manifest
    f = m["fidelity"]
    row: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "model": args.model,
        "method": args.method,
        "sparsity": args.sparsity,
        "param_ratio": m["param_ratio"],
        "probe_records": m["probe"]["records"],
        "timings_s": m["timings_s"],
        "wall_s": round(wall, 1),
        "fidelity": {k: v for k, v in f.items() if k not in ("calibration", "targets")},
        "calibration_records": f["calibration"]["records"],
        "calibration_tokens": f["calibration"]["tokens"],
        "target_records": f["targets"]["records"],
        "target_tokens": f["targets"]["tokens"],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    text = render(row, args)
    print(text)
    if args.no_write:
        return
    bench = ROOT / "docs" / "benchmarks.md"
    doc = bench.read_text(encoding="utf-8")
    start, end = f"<!-- bench:{SECTION}:start -->", f"<!-- bench:{SECTION}:end -->"
    a, b = doc.index(start) + len(start), doc.index(end)
    bench.write_text(doc[:a] + "\n" + text + doc[b:], encoding="utf-8")
    out = ROOT / "docs" / "bench" / "fidelity_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")


def render(row: dict[str, Any], args: argparse.Namespace) -> str:
    t, f = row["timings_s"], row["fidelity"]
    build = t["probe"] + t["factorise"] + t["align"]
    rho = "-" if f["spearman"] is None else f"{f['spearman']:.3f}"
    return (
        "## What the fidelity report costs (`scripts/bench_fidelity_cost.py`)\n\n"
        f"Command: `.venv/bin/python scripts/bench_fidelity_cost.py {row['command']}`\n\n"
        f"Machine: {row['machine']} CPU, {row['threads']} torch threads, 2-core machine shared "
        f"with other jobs (load average {row['loadavg_before'][0]} before the build, "
        f"{row['loadavg_after'][0]} after), no GPU; torch {row['torch']}; {row['date']}. One "
        "run, wall-clock: read the seconds as rough.\n\n"
        f"Sizes: `{row['model']}` (float32); pool {args.pool_size} records (seeded slice of "
        f"Dolly-3k, skewed toward short items, + {round(args.gsm_fraction * args.pool_size)} "
        f"GSM8K train records); {row['method']} proxy at rho {row['sparsity']} "
        f"({100 * row['param_ratio']:.1f}% of the target's parameters), {row['probe_records']} "
        f"probe records, {args.align_steps} alignment steps (the report's cost depends on "
        "neither the method nor alignment, only on the proxy's shapes); "
        f"{args.max_length} tokens per record, batch {args.batch_size}. Report: "
        f"{row['calibration_records']} calibration records ({row['calibration_tokens']} tokens) "
        f"against {row['target_records']} GSM8K test records ({row['target_tokens']} tokens), "
        "each model scoring both exactly (the target set's vector takes two passes over it: "
        "norms, then the weighted sum).\n\n"
        "| probe s | factorise s | align s | build s | report s | report / build | "
        "target s/sample | proxy s/sample | speedup | Spearman | top-10% overlap |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {t['probe']:.1f} | {t['factorise']:.1f} | {t['align']:.1f} | {build:.1f} | "
        f"{t['fidelity']:.1f} | {t['fidelity'] / build:.2f} | "
        f"{f['target']['seconds_per_sample']:.3f} | {f['proxy']['seconds_per_sample']:.3f} | "
        f"{f['speedup']:.2f}x | {rho} | {f['top_overlap']:.2f} |\n\n"
        "s/sample: seconds per calibration record of the exact scoring pass alone (the target "
        f"set's vector took {f['target']['target_set_s']:.1f} s with the target, "
        f"{f['proxy']['target_set_s']:.1f} s with the proxy). The Spearman and overlap are of "
        "this one unaligned proxy on 64 records, a noisy estimate: bench:fidelity compares them "
        "with full-pool figures.\n"
    )


if __name__ == "__main__":
    main()
