"""Benchmark: scoring throughput and influence preservation of IPSVD / SVD proxies vs the target.

One run, side by side, on SmolLM2-135M-Instruct (or ``--model``):

* throughput of gradient scoring (projected per-sample gradients of the pool and the target set)
  with the full target and with proxies at each sparsity, and of a bare forward+backward pass of
  the same model over a representative subset of the same pool (the cost floor of any gradient
  method that forms the weight gradients);
* influence preservation: Spearman correlation and top-5% overlap of each proxy's scores with the
  target's, for the GSM8K target and for the MMLU-dev target;
* the GSM8K share of each model's top 5% for the GSM8K target (a random pick gives the pool's
  GSM8K fraction);
* store reuse: the MMLU target is scored second against the stored training gradients, so it
  computes only target gradients (the table says how many training gradients it computed).

Writes the table into the ``bench:score`` section of docs/benchmarks.md and the rows into
docs/bench/scoring.json. The pool is a seeded slice (sizes are arguments, stated beside the
table): the issue's full setting (3,296 samples) is far beyond a 2-core CPU.

    .venv/bin/python scripts/bench_score.py            # or: make bench-score
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.engine.data import collate, encode, load_records, pad_token_id  # noqa: E402
from worker.engine.math.scores import spearman, top_overlap  # noqa: E402
from worker.engine.models import load_model  # noqa: E402
from worker.engine.proxy import ProxyConfig, build_proxy  # noqa: E402
from worker.engine.scoring import ScoreConfig, ScoreStats, score_stream  # noqa: E402
from worker.engine.scoring.gradients import per_sample_loss, scored_parameters  # noqa: E402
from worker.engine.scoring.store import tensor_fingerprint  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SECTION = "score"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pool-size", type=int, default=40, help="pool records (Dolly + GSM8K)")
    p.add_argument(
        "--gsm-fraction",
        type=float,
        default=300 / 3296,
        help="GSM8K share of the pool (the issue's 300 of 2,996 + 300)",
    )
    p.add_argument("--gsm-targets", type=int, default=6, help="GSM8K test records as target")
    p.add_argument("--mmlu-targets", type=int, default=6, help="MMLU dev rows as second target")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--proj-dim", type=int, default=8192)
    p.add_argument("--rhos", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--methods", nargs="+", default=["ipsvd", "svd"])
    p.add_argument("--probe-samples", type=int, default=16)
    p.add_argument("--align-steps", type=int, default=0)
    p.add_argument("--fwdbwd-samples", type=int, default=8, help="pool subset for fwd+bwd timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs untouched")
    return p.parse_args()


def make_files(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Seeded pool / target files under ``work``; returns paths and the pool's GSM8K indices."""
    rng = random.Random(args.seed)
    dolly = json.loads((DATA / "dolly" / "dolly_3k.json").read_text(encoding="utf-8"))
    gsm_train = [json.loads(x) for x in (DATA / "gsm8k" / "train.jsonl").open(encoding="utf-8")]
    gsm_test = [json.loads(x) for x in (DATA / "gsm8k" / "test.jsonl").open(encoding="utf-8")]
    n_gsm = round(args.gsm_fraction * args.pool_size)
    rows = [dict(r, origin="dolly") for r in rng.sample(dolly, args.pool_size - n_gsm)]
    rows += [dict(r, origin="gsm8k") for r in rng.sample(gsm_train, n_gsm)]
    rng.shuffle(rows)
    pool = work / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    gsm = work / "gsm8k_target.jsonl"
    picked = rng.sample(gsm_test, args.gsm_targets)
    gsm.write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
    mmlu_rows = []
    for f in sorted((DATA / "mmlu" / "dev").glob("*.csv")):
        with f.open(newline="", encoding="utf-8") as fh:
            mmlu_rows += [r for r in csv.reader(fh) if r]
    mmlu = work / "mmlu_dev_sample.csv"
    with mmlu.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rng.sample(mmlu_rows, args.mmlu_targets))
    gsm_idx = {i for i, r in enumerate(rows) if r["origin"] == "gsm8k"}
    return {"pool": pool, "gsm": gsm, "mmlu": mmlu, "gsm_idx": gsm_idx, "n_gsm": n_gsm}


def fwd_bwd_rate(model: nn.Module, tok: Any, pool: Path, args: argparse.Namespace) -> float:
    """Samples/s of a plain forward+backward (weight gradients of the scored parameters formed)
    over every k-th record of the length-sorted pool, batched like scoring."""
    examples = sorted(
        (encode(r, tok, args.max_length) for r in load_records(pool)),
        key=lambda e: (len(e.input_ids), e.index),
    )
    step = max(1, len(examples) // args.fwdbwd_samples)
    subset = examples[::step][: args.fwdbwd_samples]
    params = {id(p): p for p in scored_parameters(model, ScoreConfig().layers)}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) in params)
    pad = pad_token_id(tok)
    start = time.perf_counter()
    for i in range(0, len(subset), args.batch_size):
        batch = collate(subset[i : i + args.batch_size], pad)
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        per_sample_loss(logits, batch["labels"]).sum().backward()
        for q in params.values():
            q.grad = None
    elapsed = time.perf_counter() - start
    for p, flag in flags:
        p.requires_grad_(flag)
    return len(subset) / elapsed


def score(
    model: nn.Module, tok: Any, files: dict[str, Any], target: Path, store: Path, cfg: ScoreConfig
) -> tuple[torch.Tensor, float, ScoreStats]:
    stats = ScoreStats()
    h = tensor_fingerprint(model)
    out: dict[int, float] = {}
    start = time.perf_counter()
    for b in score_stream(
        model, tok, h, files["pool"], [target], cfg, store_dir=store, stats=stats
    ):
        out.update(zip(b.indices, b.scores, strict=True))
    elapsed = time.perf_counter() - start
    return torch.tensor([out[i] for i in range(len(out))]), elapsed, stats


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench_score_"))
    files = make_files(args, work)
    t0 = time.perf_counter()
    target = load_model(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s; work dir {work}", flush=True)
    cfg = ScoreConfig(
        proj_dim=args.proj_dim,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
    )
    variants: list[tuple[str, float | None]] = [("target", None)]
    variants += [(m, r) for r in args.rhos for m in args.methods]
    rows: list[dict[str, Any]] = []
    ref: dict[str, torch.Tensor] = {}
    n_top = max(1, round(0.05 * args.pool_size))
    for selector, rho in variants:
        model: Any
        build_s, params, achieved = 0.0, sum(p.numel() for p in target.model.parameters()), None
        if rho is None:
            model, tok = target.model, target.tokenizer
        else:
            pcfg = ProxyConfig(
                method=selector,  # type: ignore[arg-type]
                sparsity=rho,
                probe_samples=args.probe_samples,
                align_steps=args.align_steps,
                max_length=args.max_length,
                seed=args.seed,
            )
            print(f"building {selector} rho={rho}", flush=True)
            t = time.perf_counter()
            proxy = build_proxy(target, load_records(files["pool"]), pcfg)
            build_s = time.perf_counter() - t
            model, tok = proxy.model, proxy.tokenizer
            params, achieved = proxy.manifest["proxy_params"], proxy.manifest["achieved_sparsity"]
        print(f"scoring with {selector} rho={rho} (build {build_s:.0f}s)", flush=True)
        store = work / "store"
        gsm_scores, gsm_s, gsm_stats = score(model, tok, files, files["gsm"], store, cfg)
        mmlu_scores, mmlu_s, mmlu_stats = score(model, tok, files, files["mmlu"], store, cfg)
        fb = fwd_bwd_rate(model, tok, files["pool"], args)
        if rho is None:
            ref = {"gsm": gsm_scores, "mmlu": mmlu_scores}
        top = torch.topk(gsm_scores, n_top).indices.tolist()
        row = {
            "selector": selector,
            "rho": rho,
            "achieved_sparsity": achieved,
            "params": params,
            "build_s": round(build_s, 1),
            "samples_per_s": (gsm_stats.train_computed + gsm_stats.target_computed) / gsm_s,
            "fwd_bwd_samples_per_s": fb,
            "spearman_vs_target": spearman(gsm_scores, ref["gsm"]),
            "top5_overlap_vs_target": top_overlap(gsm_scores, ref["gsm"], 0.05),
            "gsm8k_share_top5": sum(i in files["gsm_idx"] for i in top) / n_top,
            "mmlu_spearman_vs_target": spearman(mmlu_scores, ref["mmlu"]),
            "mmlu_top5_overlap_vs_target": top_overlap(mmlu_scores, ref["mmlu"], 0.05),
            "mmlu_train_gradients_computed": mmlu_stats.train_computed,
            "mmlu_score_s": mmlu_s,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        # Rewritten after every model, so an interrupted run still leaves what it measured.
        write(args, files, rows, len(variants))


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def write(
    args: argparse.Namespace, files: dict[str, Any], rows: list[dict[str, Any]], planned: int
) -> None:
    head = (
        "| selector | rho | params | build s | scoring samples/s | fwd+bwd samples/s | "
        "Spearman vs target (GSM8K) | top-5% overlap | GSM8K share of top 5% | "
        "Spearman vs target (MMLU) | MMLU top-5% overlap | MMLU: train grads computed |\n"
        + "|---" * 12
        + "|\n"
    )
    body = "".join(
        f"| {r['selector']} | {_fmt(r['rho'], 1)} | {r['params'] / 1e6:.1f}M | {_fmt(r['build_s'], 0)} | "
        f"{_fmt(r['samples_per_s'])} | {_fmt(r['fwd_bwd_samples_per_s'])} | "
        f"{_fmt(r['spearman_vs_target'])} | {_fmt(r['top5_overlap_vs_target'])} | "
        f"{_fmt(r['gsm8k_share_top5'])} | {_fmt(r['mmlu_spearman_vs_target'])} | "
        f"{_fmt(r['mmlu_top5_overlap_vs_target'])} | {r['mmlu_train_gradients_computed']} |\n"
        for r in rows
    )
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = (
        "## Scoring throughput and influence preservation (`scripts/bench_score.py`)\n\n"
        f"Command: `.venv/bin/python scripts/bench_score.py {argv}`\n\n"
        f"Machine: {platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} "
        "threads (2-core machine shared with other jobs: absolute rates are noisy), torch "
        f"{torch.__version__}, one run (1 repeat).\n\n"
        f"Sizes: model `{args.model}`; pool {args.pool_size} records, seeded (seed {args.seed}) "
        f"slice of Dolly-3k + {files['n_gsm']} GSM8K train records (GSM8K share "
        f"{files['n_gsm'] / args.pool_size:.3f}, what a random top 5% would hold); targets "
        f"{args.gsm_targets} GSM8K test records and {args.mmlu_targets} MMLU dev rows; sequences "
        f"cut to {args.max_length} tokens (response kept); batch {args.batch_size}; projection "
        f"budget {args.proj_dim}; proxies probe {args.probe_samples} pool records (IPSVD) and "
        f"align for {args.align_steps} steps; fwd+bwd timed on {args.fwdbwd_samples} pool records "
        "(every k-th of the length-sorted pool) with the scored parameters' weight gradients.\n\n"
        "Scoring samples/s counts every gradient the GSM8K run computed (pool + target set) over "
        "its wall time (model already built). Rows run one after another on a machine shared "
        "with other jobs: compare scoring with fwd+bwd within a row; across rows the load "
        "differed. The MMLU run reuses the stored training gradients "
        "(last column: training gradients it computed).\n\n"
        + ("" if len(rows) == planned else f"Partial: {len(rows)} of {planned} models done.\n\n")
        + head
        + body
    )
    print(text)
    if args.no_write:
        return
    bench = ROOT / "docs" / "benchmarks.md"
    doc = bench.read_text(encoding="utf-8")
    start, end = f"<!-- bench:{SECTION}:start -->", f"<!-- bench:{SECTION}:end -->"
    a, b = doc.index(start) + len(start), doc.index(end)
    bench.write_text(doc[:a] + "\n" + text + doc[b:], encoding="utf-8")
    out = ROOT / "docs" / "bench" / "scoring.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
