"""Benchmark: exact vs projected scores, seed stability, proxies, and the cost of each mode.

Reference: the exact (unprojected) TracIn scores of the full target model. On SmolLM2-135M-Instruct
(or ``--model``), one run:

* the target's projected scores, Gaussian and eigen (LoGra) projections, each with the uniform
  grid and with the energy allocation (``--projections``), at each ``--proj-dims`` for two
  seeds each: Spearman with the exact scores, with the other seed, top-5% overlap;
* each proxy (``--proxies``, e.g. ``ipsvd:0.5``), exact and projected at the first dimension,
  against the exact target; the GSM8K share of every row's top 5%;
* samples/s of each scoring mode beside a bare forward+backward pass (weight gradients of the
  scored parameters formed), timed side by side on the same batches of a pool subset.

To keep a 240-record pool affordable on two cores, every model's scores of every mode come from
one shared forward/backward pass per batch (the engine's scorers are consumers of one hooked
pass; each computes exactly what it computes alone). Timing runs each mode on its own.

Writes the ``bench:score`` section of docs/benchmarks.md and docs/bench/scoring.json after every
model, so an interrupted run keeps what it measured; ``--append`` adds rows to the JSON of an
earlier run with the same sizes (proxies measured in a later invocation).

    .venv/bin/python scripts/bench_score.py            # or: make bench-score
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.benchdoc import write_section  # noqa: E402
from worker.engine.data import collate, load_records, pad_token_id  # noqa: E402
from worker.engine.math.scores import l2_normalize, spearman, target_direction, top_overlap  # noqa: E402
from worker.engine.models import load_model  # noqa: E402
from worker.engine.proxy import ProxyConfig, build_proxy  # noqa: E402
from worker.engine.scoring import ScoreConfig  # noqa: E402
from worker.engine.scoring.exact import ExactScorer, cosine_or_dot  # noqa: E402
from worker.engine.scoring.features import encode_records, length_order  # noqa: E402
from worker.engine.scoring.gradients import (  # noqa: E402
    GradientFeaturizer,
    build_blocks,
    eigen_bases,
    side_covariances,
    side_energies,
)
from worker.engine.scoring.hooks import (  # noqa: E402
    GradientSpace,
    hooked_pass,
    per_sample_loss,
    scored_parameters,
)

DATA = ROOT.parent / "shared" / "data"
SECTION = "score"
LOAD_AT_START = os.getloadavg()
LAYERS = ScoreConfig().layers
TASKS = ("gsm8k", "mmlu")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pool-size", type=int, default=240, help="pool records (Dolly + GSM8K)")
    p.add_argument("--gsm-fraction", type=float, default=300 / 3296, help="GSM8K share of the pool")
    p.add_argument("--gsm-targets", type=int, default=32, help="GSM8K test records (task 1)")
    p.add_argument("--mmlu-targets", type=int, default=32, help="MMLU dev rows (task 2)")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--proj-dims", type=int, nargs="+", default=[8192, 65536])
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 1], help="two projection seeds")
    p.add_argument("--eigen-samples", type=int, default=64, help="pool records per eigen basis")
    p.add_argument(
        "--projections",
        nargs="+",
        choices=["gaussian", "gaussian-energy", "eigen", "eigen-energy"],
        default=["gaussian", "gaussian-energy", "eigen", "eigen-energy"],
        help="projected kinds measured (-energy: block sizes by the probes' gradient energy)",
    )
    p.add_argument(
        "--proxies",
        nargs="*",
        default=["ipsvd:0.5", "svd:0.5"],
        help="METHOD:RHO proxies to score (unaligned, default probes)",
    )
    p.add_argument("--no-target", action="store_true", help="skip the target rows (with --append)")
    p.add_argument(
        "--retime-exact",
        action="store_true",
        help="only re-time the target's exact scoring beside fwd+bwd (same subset) and update "
        "those rows of docs/bench/scoring.json (after a change to the exact kernels)",
    )
    p.add_argument("--probe-samples", type=int, default=64)
    p.add_argument("--timing-samples", type=int, default=24, help="pool subset timed per mode")
    p.add_argument("--timing-repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="data slice seed")
    p.add_argument("--append", action="store_true", help="add rows to docs/bench/scoring.json")
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
    return {"pool": pool, "gsm8k": gsm, "mmlu": mmlu, "gsm_idx": gsm_idx, "n_gsm": n_gsm}


def batches(examples: list[Any], size: int, pad: int) -> list[dict[str, torch.Tensor]]:
    ordered = length_order(examples)
    return [collate(ordered[i : i + size], pad) for i in range(0, len(ordered), size)]


def featurizers(
    model: nn.Module,
    dims: list[int],
    seeds: list[int],
    covs: dict[int, Any],
    kinds: list[str],
    energies: dict[int, Any],
) -> dict[str, GradientFeaturizer]:
    """One featurizer per (projection kind, dim, seed); eigen bases from ``covs[seed]``
    (:func:`eigen_bases`, computed once per seed) and energies from ``energies[seed]``. Kinds:
    ``gaussian`` and ``eigen`` (the same grid for every block), ``gaussian-energy`` and
    ``eigen-energy`` (block sizes by the probes' gradient energy)."""
    out = {}
    for dim in dims:
        for seed in seeds:
            for kind in kinds:
                if kind == "gaussian":
                    blocks = build_blocks(model, LAYERS, dim, seed)
                elif kind == "gaussian-energy" and seed in energies:
                    blocks = build_blocks(
                        model, LAYERS, dim, seed, allocation="energy", energies=energies[seed]
                    )
                elif kind.startswith("eigen") and seed in covs:
                    allocation = "energy" if kind == "eigen-energy" else "uniform"
                    blocks = build_blocks(
                        model, LAYERS, dim, seed, bases=covs[seed], allocation=allocation
                    )
                else:
                    continue
                out[f"{kind}/{dim}/{seed}"] = GradientFeaturizer(
                    model, LAYERS, dim, seed, blocks=blocks
                )
    return out


def shared_pass(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    exact: tuple[ExactScorer, Any] | None,
    feats: dict[str, GradientFeaturizer],
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """One forward/backward feeding the exact scorer (when given) and every featurizer: exact
    scores ``(n, tasks)`` and each featurizer's unit features (fp16-rounded, as the engine)."""
    n = int(batch["attention_mask"].shape[0])
    consumers: list[Any] = []
    out = None
    if exact is not None:
        scorer, vectors = exact
        consumer, out = scorer.scoring(n, vectors)
        consumers.append(consumer)
    for f in feats.values():
        f.begin(n)
    hooked_pass(model, batch, [*consumers, *feats.values()])
    units = {k: l2_normalize(f.result().cpu())[0].half().float() for k, f in feats.items()}
    scores = cosine_or_dot(out[0], out[1], True).cpu() if out is not None else None
    return scores, units


def all_scores(
    model: nn.Module,
    tok: Any,
    files: dict[str, Any],
    feats: dict[str, GradientFeaturizer],
    args: argparse.Namespace,
    space: GradientSpace = "factors",
    targets_from: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """``{mode: (pool, tasks)}`` in pool order: ``exact`` and every featurizer's cosine scores
    (a proxy's low-rank layers scored in ``space``). ``targets_from``: a model whose scored
    parameters match ``model``'s (names and shapes) that gives the target tasks' exact vectors
    instead of ``model`` (no featurizers then): the pool's gradients stay ``model``'s."""
    pad = pad_token_id(tok)
    scorer = ExactScorer(model, LAYERS, space=space)
    if targets_from is not None:
        if feats:
            raise ValueError("targets_from scores exact modes only: give no featurizers")
        target_scorer = ExactScorer(targets_from, LAYERS, space=space)
        if target_scorer.blocks != scorer.blocks:
            raise ValueError("targets_from's scored parameters differ from the model's")
    else:
        target_scorer = scorer
    task_batches = {
        t: batches(
            encode_records(files[t], load_records(files[t]), tok, args.max_length),
            args.batch_size,
            pad,
        )
        for t in TASKS
    }
    # One shared pass per target batch gives the exact squared norms and every featurizer's
    # features; the exact target vectors then take one more pass.
    directions: dict[str, list[torch.Tensor]] = {k: [] for k in feats}
    sq: list[list[torch.Tensor]] = []
    for t in TASKS:
        units: dict[str, list[torch.Tensor]] = {k: [] for k in feats}
        sq.append([])
        for b in task_batches[t]:
            consumer, total = target_scorer.norms(int(b["attention_mask"].shape[0]))
            for f in feats.values():
                f.begin(int(b["attention_mask"].shape[0]))
            hooked_pass(target_scorer.model, b, [consumer, *feats.values()])
            sq[-1].append(total)
            for k, f in feats.items():
                units[k].append(l2_normalize(f.result().cpu())[0].half().float())
        for k in feats:
            directions[k].append(target_direction(torch.cat(units[k])))
    vectors = target_scorer.target_vectors([task_batches[t] for t in TASKS], normalize=True, sq=sq)
    pool = encode_records(files["pool"], load_records(files["pool"]), tok, args.max_length)
    ordered = length_order(pool)
    index = torch.tensor([e.index for e in ordered])
    out: dict[str, list[torch.Tensor]] = {"exact": [], **{k: [] for k in feats}}
    done = 0
    for start in range(0, len(ordered), args.batch_size):
        batch = collate(ordered[start : start + args.batch_size], pad)
        exact, unit = shared_pass(model, batch, (scorer, vectors), feats)
        assert exact is not None
        out["exact"].append(exact)
        for k, u in unit.items():
            out[k].append(torch.stack([u @ v for v in directions[k]], dim=1))
        done += int(batch["attention_mask"].shape[0])
        print(f"  scored {done}/{len(ordered)}", flush=True)
    result = {}
    for k, parts in out.items():
        s = torch.cat(parts)
        result[k] = torch.empty_like(s)
        result[k][index] = s
    return result


def time_modes(
    model: nn.Module,
    tok: Any,
    files: dict[str, Any],
    feats: dict[str, GradientFeaturizer],
    args: argparse.Namespace,
) -> dict[str, list[float]]:
    """Samples/s of each mode on the same subset (every k-th of the length-sorted pool), each
    mode on its own, modes interleaved within each repeat."""
    pool = length_order(
        encode_records(files["pool"], load_records(files["pool"]), tok, args.max_length)
    )
    step = max(1, len(pool) // args.timing_samples)
    subset = pool[::step][: args.timing_samples]
    pad = pad_token_id(tok)
    bs = [
        collate(subset[i : i + args.batch_size], pad)
        for i in range(0, len(subset), args.batch_size)
    ]
    scorer = ExactScorer(model, LAYERS)
    vectors = scorer.target_vectors([bs[:1], bs[1:2]], normalize=True)  # any two fixed vectors
    params = {id(p): p for p in scored_parameters(model, LAYERS)}

    def fwd_bwd() -> None:
        flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in flags:
            p.requires_grad_(id(p) in params)
        for b in bs:
            logits = model(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False
            ).logits
            per_sample_loss(logits, b["labels"]).sum().backward()
            for q in params.values():
                q.grad = None
        for p, flag in flags:
            p.requires_grad_(flag)

    one = [v[:1].contiguous() for v in vectors]  # one target task: the route rule differs
    modes: dict[str, Any] = {
        "fwd+bwd": fwd_bwd,
        "exact": lambda: [scorer(b, vectors) for b in bs],
        "exact-1task": lambda: [scorer(b, one) for b in bs],
    }
    for k, f in feats.items():
        if k.endswith(f"/{args.seeds[0]}"):  # a seed does not change the cost
            modes[k] = lambda f=f: [f(b) for b in bs]
    rates: dict[str, list[float]] = {k: [] for k in modes}
    for _ in range(args.timing_repeats):
        for k, fn in modes.items():
            t = time.perf_counter()
            fn()
            rates[k].append(len(subset) / (time.perf_counter() - t))
    return rates


def measure_model(
    label: str,
    model: nn.Module,
    tok: Any,
    files: dict[str, Any],
    args: argparse.Namespace,
    seeds: list[int],
    dims: list[int],
    extra: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Scores of every mode and their timings for one model; rows without reference columns."""
    pad = pad_token_id(tok)
    pool_records = load_records(files["pool"])
    covs, cov_s, energies = {}, {}, {}
    for seed in seeds:
        t = time.perf_counter()
        picked = sorted(random.Random(seed).sample(range(len(pool_records)), args.eigen_samples))
        probes = encode_records(
            files["pool"], [pool_records[i] for i in picked], tok, args.max_length
        )
        covs[seed] = eigen_bases(
            side_covariances(model, LAYERS, batches(probes, args.batch_size, pad))
        )
        cov_s[seed] = time.perf_counter() - t
        energies[seed] = side_energies(model, LAYERS, batches(probes, args.batch_size, pad))
    feats = featurizers(model, dims, seeds, covs, args.projections, energies)
    print(f"{label}: timing {len(feats) + 3} modes", flush=True)
    rates = time_modes(model, tok, files, feats, args)
    print(f"{label}: scoring the pool ({', '.join(['exact', *feats])})", flush=True)
    t = time.perf_counter()
    scores = all_scores(model, tok, files, feats, args)
    shared_s = time.perf_counter() - t
    rows = []
    for mode in ["exact", *feats]:
        kind, dim, pseed = [*mode.split("/"), None, None][:3] if "/" in mode else (mode, None, None)
        timed = mode if pseed is None else f"{kind}/{dim}/{args.seeds[0]}"
        rows.append(
            {
                "model": label,
                "mode": kind,
                "proj_dim": int(dim) if dim else None,
                "seed": int(pseed) if pseed else None,
                "samples_per_s": statistics.median(rates[timed]),
                "samples_per_s_runs": rates[timed],
                "fwd_bwd_samples_per_s": statistics.median(rates["fwd+bwd"]),
                "fwd_bwd_runs": rates["fwd+bwd"],
                "eigen_basis_s": cov_s.get(int(pseed))
                if kind.startswith("eigen") and pseed
                else None,
                "shared_pass_s": shared_s,
                **(
                    {
                        "one_task_samples_per_s": statistics.median(rates["exact-1task"]),
                        "one_task_runs": rates["exact-1task"],
                    }
                    if mode == "exact"
                    else {}
                ),
                **extra,
            }
        )
    return scores, rows


def compare(
    rows: list[dict[str, Any]],
    scores: dict[str, torch.Tensor],
    ref: torch.Tensor,
    files: dict[str, Any],
    seeds: list[int],
) -> None:
    """Fill each row's columns against the exact target scores ``ref: (pool, tasks)``."""
    n_top = max(1, round(0.05 * ref.shape[0]))
    for row in rows:
        key = (
            "exact" if row["mode"] == "exact" else f"{row['mode']}/{row['proj_dim']}/{row['seed']}"
        )
        s = scores[key]
        for j, task in enumerate(TASKS):
            row[f"{task}_spearman_vs_exact"] = spearman(s[:, j], ref[:, j])
            row[f"{task}_top5_vs_exact"] = top_overlap(s[:, j], ref[:, j], 0.05)
        top = torch.topk(s[:, 0], n_top).indices.tolist()
        row["gsm8k_share_top5"] = sum(i in files["gsm_idx"] for i in top) / n_top
        if row["seed"] is not None:
            other = f"{row['mode']}/{row['proj_dim']}/{seeds[1 - seeds.index(row['seed'])]}"
            if other in scores:
                row["gsm8k_spearman_seed_to_seed"] = spearman(s[:, 0], scores[other][:, 0])
                row["mmlu_spearman_seed_to_seed"] = spearman(s[:, 1], scores[other][:, 1])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_score_"))
    files = make_files(args, work)
    t0 = time.perf_counter()
    target = load_model(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s; work dir {work}", flush=True)
    out_json = ROOT / "docs" / "bench" / "scoring.json"
    rows: list[dict[str, Any]] = []
    if args.append:
        rows = [r for r in json.loads(out_json.read_text(encoding="utf-8")) if "mode" in r]
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.retime_exact:
        rates = time_modes(target.model, target.tokenizer, files, {}, args)
        for r in rows:
            if r["model"] == "target" and r["mode"] == "exact":
                r["samples_per_s"] = statistics.median(rates["exact"])
                r["samples_per_s_runs"] = rates["exact"]
                r["fwd_bwd_samples_per_s"] = statistics.median(rates["fwd+bwd"])
                r["fwd_bwd_runs"] = rates["fwd+bwd"]
                r["one_task_samples_per_s"] = statistics.median(rates["exact-1task"])
                r["one_task_runs"] = rates["exact-1task"]
                r["timing_command"] = argv
        write(args, files, rows)
        return
    tparams = sum(p.numel() for p in target.model.parameters())
    # The exact target scores are the reference of every row; they are recomputed when only
    # proxies are measured (--no-target), from the same seeded files.
    scores, target_rows = measure_model(
        "target",
        target.model,
        target.tokenizer,
        files,
        args,
        args.seeds if not args.no_target else [],
        args.proj_dims if not args.no_target else [],
        {"params": tparams, "build_s": None},
    )
    ref = scores["exact"]
    if not args.no_target:
        compare(target_rows, scores, ref, files, args.seeds)
        for r in target_rows:
            r["command"] = r["timing_command"] = argv
        rows = [r for r in rows if r["model"] != "target"] + target_rows
        write(args, files, rows)
    for spec in args.proxies:
        method, rho = spec.split(":")
        pcfg = ProxyConfig(
            method=method,  # type: ignore[arg-type]
            sparsity=float(rho),
            probe_samples=args.probe_samples,
            align_steps=0,
            max_length=args.max_length,
            seed=args.seed,
        )
        print(f"building {spec}", flush=True)
        t = time.perf_counter()
        proxy = build_proxy(target, load_records(files["pool"]), pcfg)
        build_s = time.perf_counter() - t
        extra = {"params": proxy.manifest["proxy_params"], "build_s": build_s, "rho": float(rho)}
        pscores, prows = measure_model(
            f"{method} rho {rho}",
            proxy.model,
            proxy.tokenizer,
            files,
            args,
            args.seeds[:1],
            args.proj_dims[:1],
            extra,
        )
        compare(prows, pscores, ref, files, args.seeds)
        for r in prows:
            r["command"] = r["timing_command"] = argv
        rows = [r for r in rows if r["model"] != f"{method} rho {rho}"] + prows
        write(args, files, rows)
        del proxy
    print(f"done in {time.perf_counter() - t0:.0f}s", flush=True)


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def write(args: argparse.Namespace, files: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    head = (
        "| model | scores | dim | seed | params | samples/s (x fwd+bwd time) | "
        "GSM8K: Spearman vs exact target | top-5% overlap | seed-to-seed | "
        "MMLU: Spearman vs exact target | top-5% overlap | seed-to-seed | GSM8K share of top 5% |\n"
        + "|---" * 13
        + "|\n"
    )

    def ratio(r: dict[str, Any]) -> str:
        fb = r["fwd_bwd_samples_per_s"]
        text = f"{r['samples_per_s']:.2f} ({fb / r['samples_per_s']:.2f}x)"
        one = r.get("one_task_samples_per_s")
        return text + (f"; 1 task: {one:.2f} ({fb / one:.2f}x)" if one else "")

    body = "".join(
        f"| {r['model']} | {r['mode']} | {_fmt(r['proj_dim'])} | {_fmt(r['seed'])} | "
        f"{r['params'] / 1e6:.1f}M | {ratio(r)} | {_fmt(r['gsm8k_spearman_vs_exact'])} | "
        f"{_fmt(r['gsm8k_top5_vs_exact'])} | {_fmt(r.get('gsm8k_spearman_seed_to_seed'))} | "
        f"{_fmt(r['mmlu_spearman_vs_exact'])} | {_fmt(r['mmlu_top5_vs_exact'])} | "
        f"{_fmt(r.get('mmlu_spearman_seed_to_seed'))} | {_fmt(r['gsm8k_share_top5'])} |\n"
        for r in rows
    )
    builds = "".join(
        f"- {r['model']}: built in {r['build_s']:.0f} s (probes + factorisation, no alignment).\n"
        for r in rows
        if r["mode"] == "exact" and r.get("build_s")
    )
    commands = sorted({r[k] for r in rows for k in ("command", "timing_command") if r.get(k)})
    retimed = [r["model"] for r in rows if r.get("timing_command") != r.get("command")]
    text = (
        "## Exact and projected scores, seeds, proxies (`scripts/bench_score.py`)\n\n"
        + "".join(f"Command: `.venv/bin/python scripts/bench_score.py {c}`\n\n" for c in commands)
        + (
            "The target's exact row's samples/s (and its fwd+bwd reference) come from the "
            "`--retime-exact` command, run after a change to the exact kernels (possibly on "
            "another machine); every other figure from the other command.\n\n"
            if retimed
            else ""
        )
        + f"Machine: {platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} "
        "torch threads, a 2-core machine that may be shared (load average "
        f"{LOAD_AT_START[0]:.1f} when this run started; absolute rates are noisy, the "
        f"ratios are measured side by side), torch {torch.__version__}. Timing: each mode on its "
        f"own over the same {args.timing_samples} pool records (every k-th of the length-sorted "
        f"pool, batch {args.batch_size}), {args.timing_repeats} interleaved repeats, median shown "
        "(every run in docs/bench/scoring.json).\n\n"
        f"Sizes: model `{args.model}`; pool {args.pool_size} records, a seeded (seed {args.seed}) "
        f"slice of Dolly-3k + {files['n_gsm']} GSM8K train records (GSM8K share "
        f"{files['n_gsm'] / args.pool_size:.3f}, what a random top 5% would hold); target tasks "
        f"{args.gsm_targets} GSM8K test records and {args.mmlu_targets} MMLU dev rows (a sample's "
        f"score per task); sequences cut to {args.max_length} tokens (response kept). Reference: "
        "the exact (unprojected) cosine TracIn scores of the full target, per task. Projected "
        f"rows: seeds {args.seeds[0]} and {args.seeds[1]}; eigen bases from {args.eigen_samples} "
        "pool records picked by the seed. Proxies: unaligned, "
        f"{args.probe_samples} probe records, scored exact and projected (first dimension, first "
        "seed). All scores of a model come from one shared forward/backward pass per batch "
        "(each scorer computes what it computes alone; tests check each against a naive loop).\n\n"
        "samples/s: scoring throughput of the mode alone against both target tasks; in "
        "brackets its time relative to a bare forward+backward pass (weight gradients of the "
        "scored parameters formed) timed on the same batches in the same run. Exact rows also "
        "give the rate against one task (the first), where the per-layer route rule picks the "
        "Gram route.\n\n" + head + body + ("\n" + builds if builds else "")
    )
    print(text)
    if args.no_write:
        return
    write_section(SECTION, text)
    out = ROOT / "docs" / "bench" / "scoring.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
