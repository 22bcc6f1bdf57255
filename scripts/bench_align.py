"""Benchmark ``bench:align``: where an alignment step's time goes, and what the cuts save.

One alignment step (``worker/engine/proxy/align.py``) is four phases: the target's forward +
backward for its weight gradients (``target``), the proxy's forward (``proxy fwd``), the
proxy's factor gradients with ``create_graph`` (``proxy grad``), and the backward of
``L_GA + lambda KL`` through that graph, the double backward (``double bwd``). Each phase is
timed on its own with ``perf_counter`` around synchronised calls, on the same batches, for each
setting, interleaved over repeats (median shown), on SmolLM2-135M-Instruct with a rho 0.5 SVD
proxy (the factor values do not change the cost). Beside it, the finite-difference step
(``align_hvp: finite``: one more first-order pass instead of the double backward, fused
attention) and the cosine between its gradient and the exact one on the same batch.

    .venv/bin/python scripts/bench_align.py
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.benchdoc import write_section  # noqa: E402
from worker.engine.data import collate, encode_all, load_records, pad_token_id  # noqa: E402
from worker.engine.math.alignment import (  # noqa: E402
    factor_cosines,
    factor_space_targets,
    gradient_alignment_loss,
)
from worker.engine.models import load_model  # noqa: E402
from worker.engine.proxy import ProxyConfig, build_proxy  # noqa: E402
from worker.engine.proxy.align import (  # noqa: E402
    eager_attention,
    finite_difference_gradients,
    target_signals,
)
from worker.engine.proxy.compress import factor_modules  # noqa: E402
from worker.engine.proxy.lm import (  # noqa: E402
    forward_logits,
    loss_positions,
    sequence_losses,
    temperature_kl,
)

SECTION = "align"
DATA = ROOT.parent / "shared" / "data"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--lengths", type=int, nargs="+", default=[96, 64, 48])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args()


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def step_phases(
    target: torch.nn.Module,
    proxy: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    kl: bool,
    keep: bool = False,
) -> dict[str, float]:
    layers = factor_modules(proxy)
    params = [t for m in layers.values() for t in (m.A, m.B)]
    (t_logits, t_grads, _), t_target = timed(lambda: target_signals(target, list(layers), batch))
    with torch.enable_grad():
        p_logits, t_fwd = timed(lambda: forward_logits(proxy, batch))

        def grads() -> Any:
            loss = sequence_losses(p_logits, batch["labels"]).mean()
            return torch.autograd.grad(loss, params, create_graph=True)

        p_grads, t_grad = timed(grads)

        def double() -> None:
            pairs = []
            for i, (mod, gW) in enumerate(zip(layers.values(), t_grads, strict=True)):
                tA, tB = factor_space_targets(gW, mod.A, mod.B)
                pairs.append(factor_cosines(p_grads[2 * i], p_grads[2 * i + 1], tA, tB))
            total = gradient_alignment_loss(pairs)
            if kl:
                mask = loss_positions(batch["labels"])
                total = total + 0.1 * temperature_kl(t_logits, p_logits, mask, 2.0)
            total.backward()  # type: ignore[no-untyped-call]

        _, t_double = timed(double)
    if not keep:
        for p in params:
            p.grad = None
    return {"target": t_target, "proxy fwd": t_fwd, "proxy grad": t_grad, "double bwd": t_double}


def finite_step(
    target: torch.nn.Module, proxy: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[float, list[torch.Tensor]]:
    """Seconds of one finite-difference step (fused attention allowed) and its gradients."""
    params = [p for p in proxy.parameters() if p.requires_grad]
    config = ProxyConfig(kl_weight=0.1, align_hvp="finite")
    _, seconds = timed(lambda: finite_difference_gradients(target, proxy, batch, config))
    grads = [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]
    for p in params:
        p.grad = None
    return seconds, grads


def exact_grads(
    target: torch.nn.Module, proxy: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> list[torch.Tensor]:
    params = [p for p in proxy.parameters() if p.requires_grad]
    step_phases(target, proxy, batch, kl=True, keep=True)
    grads = [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]
    for p in params:
        p.grad = None
    return grads


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows = json.loads((DATA / "dolly" / "dolly_3k.json").read_text(encoding="utf-8"))[:64]
    work = ROOT / ".bench_align.jsonl"
    work.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    try:
        records = load_records(work)
    finally:
        work.unlink()
    target = load_model(args.model)
    cfg = ProxyConfig(method="svd", sparsity=0.5, align_steps=0, max_length=max(args.lengths))
    proxy = build_proxy(target, records, cfg).model
    pad = pad_token_id(target.tokenizer)
    batches = {
        n: collate(encode_all(records[: args.batch_size], target.tokenizer, n), pad)
        for n in args.lengths
    }
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in args.lengths}
    finite: dict[int, list[float]] = {n: [] for n in args.lengths}
    agreement: dict[int, float] = {}
    for n in args.lengths:  # warm-up, and how close the finite difference comes
        with eager_attention(proxy):
            want = torch.cat([g.flatten() for g in exact_grads(target.model, proxy, batches[n])])
        got = torch.cat([g.flatten() for g in finite_step(target.model, proxy, batches[n])[1]])
        agreement[n] = float(torch.nn.functional.cosine_similarity(got, want, dim=0))
    for _ in range(args.repeats):
        for n in args.lengths:
            with eager_attention(proxy):
                runs[n].append(step_phases(target.model, proxy, batches[n], kl=True))
            finite[n].append(finite_step(target.model, proxy, batches[n])[0])
            print(n, runs[n][-1], finite[n][-1], flush=True)
    phases = ["target", "proxy fwd", "proxy grad", "double bwd"]
    head = (
        "| tokens per record | "
        + " | ".join(f"{p} s" for p in phases)
        + " | step s | finite step s | finite vs exact | gradient cosine | step vs first row |\n"
        + "|---" * (len(phases) + 6)
        + "|\n"
    )
    medians = {n: {p: statistics.median(r[p] for r in runs[n]) for p in phases} for n in runs}
    steps = {n: sum(medians[n].values()) for n in medians}
    fin = {n: statistics.median(finite[n]) for n in finite}
    base = steps[args.lengths[0]]
    body = "".join(
        f"| {n} | "
        + " | ".join(f"{medians[n][p]:.2f}" for p in phases)
        + f" | {steps[n]:.2f} | {fin[n]:.2f} | {fin[n] / steps[n]:.2f}x | {agreement[n]:.5f} | "
        + f"{steps[n] / base:.2f}x exact, {fin[n] / base:.2f}x finite |\n"
        for n in args.lengths
    )
    text = (
        "## Alignment step cost (`scripts/bench_align.py`)\n\n"
        f"Command: `.venv/bin/python scripts/bench_align.py {shlex.join(sys.argv[1:])}`\n\n"
        f"Machine: {platform.processor() or platform.machine()} CPU, {args.threads} torch "
        "threads, 2-core machine shared with other jobs (load average "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} at the end). Batch "
        f"{args.batch_size} Dolly records, SmolLM2-135M-Instruct target, rho 0.5 proxy (all 7 "
        f"projection types of 30 layers), L_GA + 0.1 KL; median of {args.repeats} interleaved "
        "repeats after one warm-up. Exact: eager attention (the double backward needs it); "
        "finite: the model's own attention.\n\n" + head + body
    )
    print(text)
    if args.no_write:
        return
    write_section(SECTION, text)


if __name__ == "__main__":
    main()
