"""Benchmark ``bench:fidelity``: how well proxies keep the full target's exact ranking.

Reference: the exact (unprojected) cosine TracIn scores of the full target on a seeded pool
(Dolly + GSM8K, the ``bench:score`` pool), per target task (GSM8K test, MMLU dev). Each row
builds a proxy with ``build_proxy`` from a separate build set (Dolly records disjoint from the
pool: probes and alignment come from there, as a service job's would come from its pool), scores
the pool exactly with it and compares: Spearman and top-5% overlap with the reference, the GSM8K
share of the proxy's top 5%, the proxy's parameter share, build seconds (probe / factorise /
align) and its response loss on held-out Dolly records. When the build produced a fidelity
report (``manifest["fidelity"]``), its calibration figures are shown beside the full-pool ones
(from rows of 2026-12-01 22:40 UTC on, against the GSM8K targets, as a select job's report is
against its own target set; before, against a slice of the build set as its own target).

Rows are named (``--rows``); each invocation appends its rows to docs/bench/fidelity.json (the
reference scores are cached there too, keyed by the sizes, so later invocations skip it) and
rewrites the ``bench:fidelity`` section of docs/benchmarks.md from every row measured so far.
Another ``--model`` has a file and a section of its own (``fidelity-<model>``). ``--spaces``
scores each built proxy once per gradient space (``weights``: each low-rank layer's product
``A B`` as one matrix, the target's coordinates), one row each.

    .venv/bin/python scripts/bench_fidelity.py --rows svd official-init unbalanced balanced
    .venv/bin/python scripts/bench_fidelity.py --rows official-aligned --sparsity 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import bench_score  # noqa: E402
from scripts.bench_score import DATA, LAYERS, TASKS, all_scores, batches, make_files  # noqa: E402
from scripts.benchdoc import write_section  # noqa: E402
from worker.engine.data import collate, encode_all, load_records, pad_token_id  # noqa: E402
from worker.engine.lowrank import LowRankLinear  # noqa: E402
from worker.engine.math.exact import inner_products, sq_norms  # noqa: E402
from worker.engine.math.scores import spearman, top_overlap  # noqa: E402
from worker.engine.models import load_model  # noqa: E402
from worker.engine.proxy import ProxyConfig, build_proxy  # noqa: E402
from worker.engine.proxy import build as build_module  # noqa: E402
from worker.engine.proxy.artifacts import load_proxy, save_proxy  # noqa: E402
from worker.engine.proxy.compress import factor_modules  # noqa: E402
from worker.engine.proxy.lm import forward_logits, sequence_losses  # noqa: E402
from worker.engine.scoring import exact as exact_module  # noqa: E402
from worker.engine.scoring.exact import ExactScorer  # noqa: E402
from worker.engine.scoring.features import encode_records, length_order  # noqa: E402
from worker.engine.scoring.hooks import (  # noqa: E402
    Callbacks,
    hooked_pass,
    per_sample_loss,
    wants_masked,
)

DEFAULT_MODEL = "smollm2-135m-instruct"


def outputs(model: str) -> tuple[str, Path]:
    """The docs section and the JSON state of ``model``'s rows: each model has its own (its own
    reference), the default model the plain ``fidelity`` ones."""
    if model == DEFAULT_MODEL:
        return "fidelity", ROOT / "docs" / "bench" / "fidelity.json"
    return f"fidelity-{model}", ROOT / "docs" / "bench" / f"fidelity-{model}.json"


# Named rows: (recipe, overrides). "unaligned" rows set no alignment.
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "svd": ("iprox", {"method": "svd", "align_steps": 0}),
    "official-init": ("official", {"align_epochs": None, "align_steps": 0}),
    "unbalanced": ("iprox", {"balance": False, "align_steps": 0}),
    "balanced": ("iprox", {"align_steps": 0}),
    "balanced-global": ("iprox", {"rank_allocation": "global", "align_steps": 0}),
    "official-aligned": ("official", {}),
    "iprox-aligned": ("iprox", {}),
    # the iprox recipe before its distillation phase existed (now distill_steps 200)
    "iprox-no-distill": ("iprox", {"distill_steps": 0}),
}

# Rows of no proxy: the full target itself in another dtype, scored exactly. How far its ranking
# is from the float32 reference is a floor for any proxy's agreement (scores that move under
# rounding alone cannot be kept by a smaller model either) and what bfloat16 scoring on a GPU
# gives up.
CONTROLS: dict[str, torch.dtype | None] = {
    "target-bfloat16": torch.bfloat16,
    "target-split-half": None,
}
"""Rows without a proxy: the full target in another dtype, scored against the reference; or
(``None``) the target's scores from one half of each target set against the other half's."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument(
        "--rows", nargs="*", default=[], help=f"rows: {', '.join(ROWS)} (none: rewrite the docs)"
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every row of this run (JSON values), e.g. kl_weight=0.1",
    )
    p.add_argument("--label", default="", help="suffix for the rows' names (with --set)")
    p.add_argument(
        "--spaces",
        nargs="+",
        default=["factors"],
        choices=list(SPACE_LABELS),
        help="score each built proxy in these gradient spaces (one row each; weights: the "
        "product A B of each low-rank layer as one matrix, marked in the row's name; "
        "target-factors: a diagnostic, the full target's own gradients seen through the "
        "proxy's factor maps, the ceiling of factor-space scores; hybrid / hybrid-weights: the "
        "pool's gradients from the proxy, the target tasks' from the full target, in the "
        "proxy's factor space / in weight space; mix-target-*: diagnostics, one side of each "
        "per-sample gradient from the target, see mixed_captures)",
    )
    p.add_argument(
        "--proxy-dir",
        type=Path,
        default=None,
        help="keep each built proxy under this folder (one subfolder per row name) and load "
        "it from there when a later run asks for the same row and config, so more spaces can "
        "be scored without building again",
    )
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--pool-size", type=int, default=240)
    p.add_argument("--gsm-fraction", type=float, default=300 / 3296)
    p.add_argument("--gsm-targets", type=int, default=32)
    p.add_argument("--mmlu-targets", type=int, default=32)
    p.add_argument("--build-size", type=int, default=2000, help="Dolly records to build from")
    p.add_argument("--heldout", type=int, default=32, help="Dolly records for the held-out loss")
    p.add_argument(
        "--build-mix",
        choices=["dolly", "pool"],
        default="dolly",
        help="build set: Dolly only, or Dolly and GSM8K train records at the pool's share "
        "(both disjoint from the pool)",
    )
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="data slice seed")
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--ensemble",
        nargs="+",
        default=[],
        metavar="ROW",
        help="no build: a row from stored rows' pool scores (exact row names), each task's "
        "scores standardised per row and averaged, named 'ensemble of N' with --label",
    )
    p.add_argument(
        "--wait-reference",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="wait up to this long for another run to store the reference scores",
    )
    return p.parse_args()


def build_files(args: argparse.Namespace, work: Path, pool_ids: set[str]) -> dict[str, Path]:
    """Build set and held-out set, seeded, disjoint from the pool: Dolly records, and with
    ``--build-mix pool`` GSM8K train records in the build set at the pool's share (what a job
    that builds from its own pool sees). The held-out set is Dolly records either way."""
    import random

    rng = random.Random(args.seed + 1)
    dolly = json.loads((DATA / "dolly" / "dolly_3k.json").read_text(encoding="utf-8"))
    free = [r for r in dolly if json.dumps(r, sort_keys=True) not in pool_ids]
    rng.shuffle(free)
    held = free[args.build_size : args.build_size + args.heldout]
    if args.build_mix == "pool":
        gsm_train = [json.loads(x) for x in (DATA / "gsm8k" / "train.jsonl").open("rb")]
        gsm_free = [r for r in gsm_train if json.dumps(r, sort_keys=True) not in pool_ids]
        n_gsm = round(args.gsm_fraction * args.build_size)
        build = free[: args.build_size - n_gsm] + rng.sample(gsm_free, n_gsm)
        rng.shuffle(build)
    else:
        build = free[: args.build_size]
    out = {}
    for name, rows in (("build", build), ("heldout", held)):
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out[name] = path
    return out


def heldout_loss(model: torch.nn.Module, tok: Any, path: Path, args: argparse.Namespace) -> float:
    examples = encode_all(load_records(path), tok, args.max_length, on_empty="skip")
    pad = pad_token_id(tok)
    losses = []
    with torch.no_grad():
        for i in range(0, len(examples), args.batch_size):
            batch = collate(examples[i : i + args.batch_size], pad)
            losses.append(sequence_losses(forward_logits(model, batch), batch["labels"]))
    return float(torch.cat(losses).mean())


def cached_probes() -> None:
    """Probe collection memoised by its inputs: rows that differ only after probing (gauge,
    ranks) reuse one collection. Each caller gets fresh dicts (compression pops layers)."""
    original = build_module.collect_probes
    memo: dict[Any, Any] = {}

    def collect(model: Any, layers: Any, examples: Any, **kw: Any) -> Any:
        key = (
            id(model),
            tuple(layers),
            tuple(tuple(e.input_ids) for e in examples),
            tuple(sorted((k, v) for k, v in kw.items() if k not in ("progress", "should_stop"))),
        )
        if key not in memo:
            memo[key] = original(model, layers, examples, **kw)
        p = memo[key]
        return type(p)(dict(p.inputs), dict(p.grads), p.sequences, p.positions_per_sequence)

    build_module.collect_probes = collect  # type: ignore[assignment]


def compare(scores: torch.Tensor, ref: torch.Tensor, gsm_idx: set[int], n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    k = max(1, round(0.05 * n))
    for t, task in enumerate(TASKS):
        out[f"{task}_spearman"] = spearman(scores[:, t], ref[:, t])
        out[f"{task}_top5"] = top_overlap(scores[:, t], ref[:, t], 0.05)
    top = torch.topk(scores[:, 0], k).indices.tolist()
    out["gsm8k_share_top5"] = sum(1 for i in top if i in gsm_idx) / k
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unknown = [r for r in args.rows if r not in ROWS and r not in CONTROLS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join([*ROWS, *CONTROLS])}")
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    sizes = {
        k: getattr(args, k)
        for k in (
            "model",
            "pool_size",
            "gsm_fraction",
            "gsm_targets",
            "mmlu_targets",
            "max_length",
            "seed",
        )
    }
    deadline = time.monotonic() + 60 * args.wait_reference
    while True:
        out = outputs(args.model)[1]
        state = json.loads(out.read_text()) if out.exists() else {"sizes": None, "rows": []}
        if state.get("sizes") != sizes:
            state = {"sizes": sizes, "rows": [], "reference": None}
        if state.get("reference") is not None or time.monotonic() > deadline:
            break
        time.sleep(30)
    cached_probes()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = make_files(args, work)
        if args.ensemble:
            row = ensemble_row(args, state, files)
            state["rows"] = [r for r in state["rows"] if r["row"] != row["row"]] + [row]
            print(json.dumps({k: row[k] for k in row if k not in HIDDEN}, indent=1))
            if not args.no_write:
                write(args, state, files)
            return
        pool_rows = [json.loads(x) for x in files["pool"].open(encoding="utf-8")]
        pool_ids = {
            json.dumps({k: v for k, v in r.items() if k != "origin"}, sort_keys=True)
            for r in pool_rows
        }
        extra = build_files(args, work, pool_ids)
        if not args.rows:  # rewrite the docs from the stored rows
            write(args, state, files)
            return
        target = load_model(args.model)
        model, tok = target.model, target.tokenizer
        if state.get("reference") is None:
            print("reference: exact scores of the full target", flush=True)
            t = time.perf_counter()
            ref = all_scores(model, tok, files, {}, args)["exact"]
            state["reference"] = {
                "scores": ref.tolist(),
                "seconds": time.perf_counter() - t,
                "heldout_loss": heldout_loss(model, tok, extra["heldout"], args),
                "params": sum(p.numel() for p in model.parameters()),
            }
        ref = torch.tensor(state["reference"]["scores"])
        build_records = load_records(extra["build"])
        gsm_targets = load_records(files["gsm8k"])
        for name in args.rows:
            if name in CONTROLS:
                row = control_row(name, model, tok, files, extra["heldout"], ref, args)
                state["rows"] = [r for r in state["rows"] if r["row"] != name] + [row]
                if not args.no_write:
                    write(args, state, files)
                continue
            recipe, row_overrides = ROWS[name]
            given = {
                "sparsity": args.sparsity,
                "max_length": args.max_length,
                "batch_size": args.batch_size,
                **row_overrides,
                **overrides,
            }
            config = ProxyConfig.for_recipe(recipe, **given)
            label = name + (f" ({args.label})" if args.label else "")
            proxy, build_s = built_proxy(args, label, target, build_records, config, gsm_targets)
            m = proxy.manifest
            loss = heldout_loss(proxy.model, tok, extra["heldout"], args)
            for space in args.spaces:
                scored = label + SPACE_LABELS[space]
                print(f"{scored}: scoring the pool", flush=True)
                t = time.perf_counter()
                more: dict[str, Any] = {}
                scores = space_scores(
                    space, model, proxy.model, tok, files, args, more, extra["heldout"], ref
                )
                score_s = time.perf_counter() - t
                row = {
                    "row": scored,
                    "space": space,
                    "loaded": m.get("loaded_from_cache", False),
                    "build_mix": args.build_mix,
                    "recipe": recipe,
                    "sparsity": args.sparsity,
                    "overrides": {**row_overrides, **overrides},
                    "param_share": m["proxy_params"] / m["target_params"],
                    "timings_s": m["timings_s"],
                    "build_s": build_s,
                    "score_s": score_s,
                    "distill_steps": m["alignment"]["distill"]["steps"],
                    "align_steps": m["alignment"]["steps"],
                    "align_first": m["alignment"].get("first"),
                    "align_last": m["alignment"]["last"],
                    "distill_summary": m["alignment"]["distill"],
                    "heldout_loss": (
                        state["reference"]["heldout_loss"] if space == "target-factors" else loss
                    ),
                    "ranks_by_type": m["ranks_by_type"],
                    "fidelity": m.get("fidelity"),
                    **compare(scores, ref, files["gsm_idx"], args.pool_size),
                    **more,
                    "scores": stored(scores),
                    **stamp(),
                }
                state["rows"] = [r for r in state["rows"] if r["row"] != scored] + [row]
                print(json.dumps({k: row[k] for k in row if k not in HIDDEN}, indent=1))
                if not args.no_write:
                    write(args, state, files)
            del proxy


HIDDEN = ("ranks_by_type", "weights", "scores")
"""Row fields too long to print (they stay in the JSON)."""

SPACE_LABELS = {
    "factors": "",
    "weights": " [weight-space scores]",
    "target-factors": " [the target's gradients in its factor space]",
    "hybrid": " [target tasks' gradients from the full target]",
    "hybrid-weights": " [target tasks' gradients from the full target, weight space]",
    "mix-target-h": " [proxy's delta, target's h]",
    "mix-target-delta": " [target's delta, proxy's h]",
    "mix-target-logit-grad": " [proxy's backward from the target's logit gradient]",
    "module-norms": " [each module scaled to the target's gradient norm]",
    "dense-backward": " [proxy's forward, the target's weights in its backward]",
    "logits-x1.5": " [proxy's logits sharpened 1.5x for its loss gradient]",
    "logits-x2": " [proxy's logits sharpened 2x for its loss gradient]",
}


@contextlib.contextmanager
def mixed_captures(proxy: torch.nn.Module, viewed: torch.nn.Module, side: str) -> Iterator[None]:
    """A diagnostic: while open, every hooked pass of ``proxy`` (in the scorers this script
    uses) runs ``viewed`` (:func:`target_through_factors`) on the same batch too and feeds its
    consumers the proxy's output gradients ``delta`` with the target's inputs ``h``
    (``side="h"``), or the target's ``delta`` with the proxy's ``h`` (``side="delta"``): which
    of the two loses the target's ranking. ``side="logit-grad"``: the proxy's own pass, but
    its backward starts from the target's loss gradient at the logits (``softmax(z) - y``
    per loss token) instead of its own: how much of ``delta``'s loss is the proxy's output
    distribution rather than its backward through the compressed layers. Scored parameters are
    the proxy's factors; only consumers that take raw (unmasked) inputs are fed (the exact
    scorer's)."""
    real = bench_score.hooked_pass

    def from_target_logits(batch: dict[str, torch.Tensor], consumers: Any) -> None:
        with torch.no_grad():
            z = forward_logits(viewed, batch).float()
        z.requires_grad_(True)
        (grad,) = torch.autograd.grad(per_sample_loss(z, batch["labels"]).sum(), z)

        def inject(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> None:
            out.register_hook(lambda g: grad.to(g.dtype))

        head = proxy.get_output_embeddings()  # type: ignore[operator]
        handle = head.register_forward_hook(inject)
        try:
            real(proxy, batch, consumers)
        finally:
            handle.remove()

    def record(model: torch.nn.Module, batch: dict[str, torch.Tensor], names: list[str]) -> Any:
        got: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        consumer = Callbacks(names, lambda _n, h: h, lambda n, d, h: got.__setitem__(n, (d, h)))
        real(model, batch, [consumer])
        return got

    def mixed(model: torch.nn.Module, batch: dict[str, torch.Tensor], consumers: Any) -> None:
        if model is not proxy:
            real(model, batch, consumers)
            return
        if side == "logit-grad":
            from_target_logits(batch, consumers)
            return
        names = sorted({n for c in consumers for n in c.modules()})
        assert not any(wants_masked(c) for c in consumers)
        ours, theirs = record(proxy, batch, names), record(viewed, batch, names)
        for c in consumers:
            for name in c.modules():
                delta = ours[name][0] if side == "h" else theirs[name][0]
                h = theirs[name][1] if side == "h" else ours[name][1]
                c.on_backward(name, delta, c.on_forward(name, h))

    bench_score.hooked_pass = mixed
    exact_module.hooked_pass = mixed
    try:
        yield
    finally:
        bench_score.hooked_pass = real
        exact_module.hooked_pass = real


def space_scores(
    space: str,
    target: torch.nn.Module,
    proxy: torch.nn.Module,
    tok: Any,
    files: dict[str, Any],
    args: argparse.Namespace,
    extra: dict[str, Any] | None = None,
    calibration: Path | None = None,
    ref: torch.Tensor | None = None,
) -> torch.Tensor:
    """The pool's exact scores ``(pool, tasks)`` of ``proxy`` in one of :data:`SPACE_LABELS`'
    spaces; the ones that need the target seen through the proxy's factors build that view
    (:func:`target_through_factors`) for this call only. ``module-norms`` (needs
    ``calibration`` records and ``ref``) also fills ``extra`` (see :func:`module_norm_scores`)."""
    if space == "hybrid-weights":
        return all_scores(proxy, tok, files, {}, args, space="weights", targets_from=target)[
            "exact"
        ]
    if space in ("factors", "weights"):
        return all_scores(proxy, tok, files, {}, args, space=space)["exact"]
    if space.startswith("logits-x"):
        return sharpened_scores(proxy, float(space.removeprefix("logits-x")), tok, files, args)
    if space == "dense-backward":
        return all_scores(dense_backward(target, proxy), tok, files, {}, args)["exact"]
    viewed = target_through_factors(target, proxy)
    if space == "module-norms":
        assert calibration is not None and ref is not None and extra is not None
        return module_norm_scores(viewed, proxy, tok, files, args, calibration, ref, extra)
    if space == "target-factors":
        return all_scores(viewed, tok, files, {}, args)["exact"]
    if space == "hybrid":
        return all_scores(proxy, tok, files, {}, args, targets_from=viewed)["exact"]
    with mixed_captures(proxy, viewed, space.removeprefix("mix-target-")):
        return all_scores(proxy, tok, files, {}, args)["exact"]


def module_parts(
    model: torch.nn.Module,
    tok: Any,
    files: dict[str, Any],
    args: argparse.Namespace,
    records: Path,
    tasks: bool = True,
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Per scored module ``m`` (in module order) and record of ``records`` (in file order): the
    contributions ``<g_im, v_km>`` ``(n, M, K)`` to the exact cosine score's numerator, where
    ``v_k`` is task ``k``'s vector of the whole gradient (:func:`all_scores`' targets), and the
    squared norms ``|g_im|^2`` ``(n, M)``. ``tasks=False``: the norms alone (inner is empty).
    Summed over ``m``, ``inner / sqrt(sq)`` is :func:`all_scores`' exact score."""
    pad = pad_token_id(tok)
    scorer = ExactScorer(model, LAYERS)
    names = [name for name, _, _ in scorer.blocks]
    modules = list(dict.fromkeys(names))
    column = [modules.index(n) for n in names]
    vectors = (
        scorer.target_vectors(
            [
                batches(
                    encode_records(files[t], load_records(files[t]), tok, args.max_length),
                    args.batch_size,
                    pad,
                )
                for t in TASKS
            ],
            normalize=True,
        )
        if tasks
        else []
    )
    examples = encode_records(records, load_records(records), tok, args.max_length)
    ordered = length_order(examples)
    inner = torch.zeros(len(examples), len(modules), len(TASKS) if tasks else 0)
    sq = torch.zeros(len(examples), len(modules))
    for start in range(0, len(ordered), args.batch_size):
        chunk = ordered[start : start + args.batch_size]
        rows = torch.tensor([e.index for e in chunk])

        def on_block(
            j: int, left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor = rows
        ) -> None:
            sq[rows, column[j]] += sq_norms(left, right).cpu()
            if tasks:
                inner[rows, column[j]] += inner_products(left, right, vectors[j]).cpu()

        hooked_pass(model, collate(chunk, pad), [scorer.consumer(on_block)])
    return modules, inner, sq


def task_spearman(scores: torch.Tensor, ref: torch.Tensor) -> list[float]:
    """Spearman of ``scores`` against ``ref`` per task column (``(n, K)`` each)."""
    return [spearman(scores[:, k], ref[:, k]) for k in range(scores.shape[1])]


def weighted_scores(inner: torch.Tensor, sq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Cosine scores ``(n, K)`` from :func:`module_parts` with module ``m``'s gradient scaled
    by ``sqrt(w_m)`` on the pool's side (the task vectors keep their unweighted norms)."""
    return (inner * w[None, :, None]).sum(1) / (sq * w).sum(1).clamp_min(1e-30).sqrt()[:, None]


def layer_table(
    modules: list[str],
    proxy: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    ref: torch.Tensor,
) -> dict[str, Any]:
    """Where the proxy loses the ranking, from both models' :func:`module_parts` on the pool.
    Per module type and per third of the depth: the Spearman of the proxy's scores from those
    modules alone against the target's from the same modules (``proxy_vs_target``), and of the
    target's from those modules alone against its full reference (``target_vs_full``: how much
    of the ranking they carry); each module group's share of the pool's mean squared gradient
    norm in each model; and the proxy's full scores with each group left out."""
    depth = [int(next(p for p in m.split(".") if p.isdigit())) for m in modules]
    layers = max(depth) + 1
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(modules):
        groups.setdefault(m.rsplit(".", 1)[-1], []).append(i)
    for b in range(3):
        lo, hi = b * layers // 3, (b + 1) * layers // 3
        groups[f"layers {lo}-{hi - 1}"] = [i for i, d in enumerate(depth) if lo <= d < hi]
    out: dict[str, Any] = {}
    p_share = proxy[1].mean(0) / proxy[1].mean(0).sum()
    t_share = target[1].mean(0) / target[1].mean(0).sum()
    for g, idx in groups.items():
        only = torch.zeros(len(modules))
        only[idx] = 1.0
        p = weighted_scores(*proxy, only)
        t = weighted_scores(*target, only)
        drop = weighted_scores(*proxy, 1.0 - only)
        out[g] = {
            "proxy_vs_target": task_spearman(p, t),
            "target_vs_full": task_spearman(t, ref),
            "proxy_without_vs_full": task_spearman(drop, ref),
            "proxy_norm_share": float(p_share[idx].sum()),
            "target_norm_share": float(t_share[idx].sum()),
        }
    return out


def module_norm_scores(
    viewed: torch.nn.Module,
    proxy: torch.nn.Module,
    tok: Any,
    files: dict[str, Any],
    args: argparse.Namespace,
    calibration: Path,
    ref: torch.Tensor,
    extra: dict[str, Any],
) -> torch.Tensor:
    """The proxy's exact scores with each scored module's gradient scaled so that its mean
    squared norm on ``calibration`` records (the held-out Dolly records, disjoint from the pool
    and the build set) matches the target's in the same factor space (``viewed``): a
    per-module correction that needs only norms a build could measure. Fills ``extra`` with
    the :func:`layer_table` (the target's side from ``viewed`` on the pool), the figures with
    weights from the pool's own norms instead, and the weights."""
    modules, _, p_cal = module_parts(proxy, tok, files, args, calibration, tasks=False)
    _, _, t_cal = module_parts(viewed, tok, files, args, calibration, tasks=False)
    _, p_inner, p_sq = module_parts(proxy, tok, files, args, files["pool"])
    _, t_inner, t_sq = module_parts(viewed, tok, files, args, files["pool"])
    w_cal = t_cal.mean(0) / p_cal.mean(0).clamp_min(1e-30)
    w_pool = t_sq.mean(0) / p_sq.mean(0).clamp_min(1e-30)
    from_pool = weighted_scores(p_inner, p_sq, w_pool)
    extra["layers"] = layer_table(modules, (p_inner, p_sq), (t_inner, t_sq), ref)
    ones = torch.ones(len(modules))
    unweighted = weighted_scores(p_inner, p_sq, ones)  # = the factors row
    unweighted_target = weighted_scores(t_inner, t_sq, ones)
    for key, s in (("weights_from_pool", from_pool), ("unweighted", unweighted)):
        extra[key] = {
            "spearman": task_spearman(s, ref),
            "top5": [top_overlap(s[:, k], ref[:, k], 0.05) for k in range(len(TASKS))],
        }
    extra["weights"] = {m: float(w) for m, w in zip(modules, w_cal, strict=True)}
    # the cosine's two parts apart: each model's numerator over the other's norm
    p_num, t_num = p_inner.sum(1), t_inner.sum(1)
    p_norm, t_norm = p_sq.sum(1).sqrt()[:, None], t_sq.sum(1).sqrt()[:, None]
    extra["decomposition"] = {
        "proxy_inner_over_target_norm": task_spearman(p_num / t_norm, ref),
        "target_inner_over_proxy_norm": task_spearman(t_num / p_norm, ref),
        "proxy_inner_alone": task_spearman(p_num, ref),
        "norms_proxy_vs_target": spearman(p_norm[:, 0], t_norm[:, 0]),
        "target_factor_view_vs_reference": task_spearman(unweighted_target, ref),
    }
    return weighted_scores(p_inner, p_sq, w_cal)


def built_proxy(
    args: argparse.Namespace,
    label: str,
    target: Any,
    build_records: list[Any],
    config: ProxyConfig,
    gsm_targets: list[Any],
) -> tuple[Any, float]:
    """The row's proxy and its build seconds: built (the report's target set is the GSM8K
    targets, as a select job's would be its own), or, with ``--proxy-dir``, loaded when an
    earlier run kept one of the same row name, config and build mix (its build seconds then
    the stored ones, and ``manifest["loaded_from_cache"]`` set)."""
    folder = args.proxy_dir / label.replace("/", "_").replace(" ", "_") if args.proxy_dir else None
    if folder is not None and (folder / "bench.json").exists():
        kept = json.loads((folder / "bench.json").read_text())
        # a field added since the proxy was kept reads as its default
        same = ProxyConfig.from_dict(kept["config"]) == config
        if same and kept.get("build_mix") == args.build_mix:
            print(f"{label}: loading the proxy kept in {folder}", flush=True)
            proxy = load_proxy(folder, target)
            proxy.manifest["loaded_from_cache"] = True
            return proxy, float(kept["build_s"])
    print(f"{label}: building ({config.to_dict()})", flush=True)
    t = time.perf_counter()
    proxy = build_proxy(target, build_records, config, targets=gsm_targets, progress=log_steps)
    build_s = time.perf_counter() - t
    if folder is not None:
        save_proxy(proxy, folder)
        kept = {"config": config.to_dict(), "build_mix": args.build_mix, "build_s": build_s}
        (folder / "bench.json").write_text(json.dumps(kept))
    return proxy, build_s


def log_steps(stage: str, done: int, total: int, metrics: Any = None) -> None:
    """Print every 10th alignment step's metrics (the L_GA trajectory of a build)."""
    if stage == "aligning" and metrics and (done % 10 == 0 or done == total):
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"  aligning {done}/{total}: {shown}", flush=True)


class DenseFactorView(LowRankLinear):
    """A target layer that computes with its dense weight ``W`` but is scored through a proxy
    layer's factor maps: its per-sample gradient ``G = sum_t delta_t h_t^T`` is seen as
    ``(G B^T, A^T G)``, what the proxy's factor gradients would be were the proxy's own
    ``delta`` and ``h`` the target's. Scores of a model of these are the ceiling of any
    factor-space proxy with those factors: alignment can at best make the proxy's gradients
    match them."""

    def __init__(self, dense: torch.nn.Linear, factors: LowRankLinear) -> None:
        super().__init__(factors.A, factors.B, dense.bias)
        self.dense = dense.weight.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.dense.to(x.dtype), self.bias)


def target_through_factors(target: torch.nn.Module, proxy: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``target`` whose layers compressed in ``proxy`` are :class:`DenseFactorView`
    modules: the same function, scored in the proxy's factor coordinates."""
    return with_views(target, target, proxy, DenseFactorView)


def with_views(
    base: torch.nn.Module,
    target: torch.nn.Module,
    proxy: torch.nn.Module,
    view: Callable[[torch.nn.Linear, LowRankLinear], LowRankLinear],
) -> torch.nn.Module:
    """A copy of ``base`` in which every layer compressed in ``proxy`` is ``view(the target's
    dense layer, the proxy's factors)``."""
    out = copy.deepcopy(base)
    for name, factors in factor_modules(proxy).items():
        parent, _, leaf = name.rpartition(".")
        dense = target.get_submodule(name)
        assert isinstance(dense, torch.nn.Linear)
        setattr(out.get_submodule(parent), leaf, view(dense, factors))
    return out


def sharpened_scores(
    proxy: torch.nn.Module, scale: float, tok: Any, files: dict[str, Any], args: argparse.Namespace
) -> torch.Tensor:
    """The proxy's exact scores with its logits multiplied by ``scale`` (a softmax temperature
    of ``1 / scale``) before the loss, for pool and target records alike: a diagnostic of
    whether an under-confident proxy's loss gradients (``softmax(z) - y`` large at tokens the
    target already predicts) cost it the ranking, and of the cheapest repair."""
    head = proxy.get_output_embeddings()  # type: ignore[operator]
    handle = head.register_forward_hook(lambda _m, _i, out: out * scale)
    try:
        return all_scores(proxy, tok, files, {}, args)["exact"]
    finally:
        handle.remove()


class _DenseInputGrad(torch.autograd.Function):
    """``y = A (B x) + b`` forward; backward to ``x`` through a dense ``W`` instead of
    ``B^T A^T`` (no parameter gradients: the scorers take theirs from the captures)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        bias: torch.Tensor | None,
        W: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(W)
        return torch.nn.functional.linear(torch.nn.functional.linear(x, B), A, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (W,) = ctx.saved_tensors
        return grad @ W.to(grad.dtype), None, None, None, None


class DenseBackwardView(LowRankLinear):
    """A proxy layer whose forward is its own (``A B``) but whose backward passes output
    gradients to its input through the target's dense ``W``: a diagnostic of how much of the
    proxy's lost ranking is its backward through compressed layers, with its own forward
    (activations, attention, logits) kept. Scored in its factor space, as the proxy."""

    def __init__(self, dense: torch.nn.Linear, factors: LowRankLinear) -> None:
        super().__init__(factors.A, factors.B, factors.bias)
        self.dense = dense.weight.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        out: torch.Tensor = _DenseInputGrad.apply(
            x, self.A.to(x.dtype), self.B.to(x.dtype), b, self.dense
        )
        return out


def dense_backward(target: torch.nn.Module, proxy: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``proxy`` whose low-rank layers are :class:`DenseBackwardView` modules."""
    return with_views(proxy, target, proxy, DenseBackwardView)


def ensemble_row(
    args: argparse.Namespace, state: dict[str, Any], files: dict[str, Any]
) -> dict[str, Any]:
    """The row of ``--ensemble``: the named rows' stored pool scores, each task's column
    standardised (zero mean, unit spread) per row and averaged, against the reference. Its
    cost is the members' together: build and scoring seconds summed (each member is scored on
    the whole pool), params the largest member's."""
    by_name = {r["row"]: r for r in state["rows"]}
    missing = [n for n in args.ensemble if n not in by_name]
    if missing:
        raise SystemExit(f"--ensemble: no stored row named {missing}")
    members = [by_name[n] for n in args.ensemble]
    unscored = [m["row"] for m in members if "scores" not in m]
    if unscored:
        raise SystemExit(f"--ensemble: rows {unscored} predate stored scores; score them again")
    stacked = torch.stack([torch.tensor(m["scores"]) for m in members])  # (rows, pool, tasks)
    z = (stacked - stacked.mean(1, keepdim=True)) / stacked.std(1, keepdim=True).clamp_min(1e-12)
    scores = z.mean(0)
    ref = torch.tensor(state["reference"]["scores"])
    first = members[0]
    keys = ("probe", "factorise", "align", "total")
    return {
        "row": f"ensemble of {len(members)}" + (f" ({args.label})" if args.label else ""),
        "members": args.ensemble,
        "space": first["space"],
        "recipe": first["recipe"],
        "sparsity": first["sparsity"],
        "overrides": first["overrides"],
        "param_share": max(m["param_share"] for m in members),
        "timings_s": {k: sum(m["timings_s"].get(k, 0.0) for m in members) for k in keys},
        "build_s": sum(m["build_s"] for m in members),
        "score_s": sum(m["score_s"] for m in members),
        "distill_steps": first.get("distill_steps", 0),
        "align_steps": first["align_steps"],
        "align_last": None,
        "heldout_loss": None,  # no one model's
        "ranks_by_type": first["ranks_by_type"],
        "fidelity": None,
        "members_agree": [
            task_spearman(stacked[i], stacked[j])
            for i in range(len(members))
            for j in range(i + 1, len(members))
        ],
        **compare(scores, ref, files["gsm_idx"], args.pool_size),
        "scores": stored(scores),
        **stamp(),
    }


def stored(scores: torch.Tensor) -> list[list[float]]:
    """A row's pool scores ``(pool, tasks)`` as kept in the JSON (7 decimals)."""
    return [[round(x, 7) for x in r] for r in scores.tolist()]


def stamp() -> dict[str, Any]:
    """How, when and at what load a row was measured."""
    return {
        "command": shlex.join(sys.argv[1:]),
        "load": Path("/proc/loadavg").read_text().split()[:3],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def control_row(
    name: str,
    model: torch.nn.Module,
    tok: Any,
    files: dict[str, Any],
    heldout: Path,
    ref: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The row of a :data:`CONTROLS` entry: a copy of the target in that dtype scored exactly
    against ``ref``; or the split-half control, the target scored against the first half of
    each target set and compared with its scores against the second half (how much the
    reference ranking depends on which target records were drawn; each half against ``ref``
    is in ``halves_vs_reference``)."""
    dtype = CONTROLS[name]
    other = copy.deepcopy(model).to(dtype) if dtype is not None else model
    print(f"{name}: scoring the pool", flush=True)
    t = time.perf_counter()
    more: dict[str, Any] = {}
    if dtype is None:
        first, second = (
            all_scores(model, tok, half_targets(files, part), {}, args)["exact"] for part in (0, 1)
        )
        more["halves_vs_reference"] = [
            compare(h, ref, files["gsm_idx"], args.pool_size) for h in (first, second)
        ]
        scores, ref = first, second
    else:
        scores = all_scores(other, tok, files, {}, args)["exact"]
    row = {
        "row": name,
        "space": "weights",
        "recipe": "-",
        "sparsity": 0.0,
        "overrides": {},
        "param_share": 1.0,
        "timings_s": {"probe": 0.0, "factorise": 0.0, "align": 0.0, "total": 0.0},
        "build_s": 0.0,
        "score_s": time.perf_counter() - t,
        "distill_steps": 0,
        "align_steps": 0,
        "align_last": None,
        "heldout_loss": heldout_loss(other, tok, heldout, args),
        "ranks_by_type": {},
        "fidelity": None,
        **compare(scores, ref, files["gsm_idx"], args.pool_size),
        **more,
        **stamp(),
    }
    print(json.dumps(row, indent=1))
    return row


def half_targets(files: dict[str, Any], part: int) -> dict[str, Any]:
    """``files`` with each target set cut to its first (``part`` 0) or second half, written
    beside it."""
    out = dict(files)
    for task in TASKS:
        path = Path(files[task])
        rows: list[Any]
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.reader(fh) if r]
        else:
            rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
        mid = len(rows) // 2
        kept = rows[:mid] if part == 0 else rows[mid:]
        half = path.with_name(f"{path.stem}-half{part}{path.suffix}")
        if path.suffix == ".csv":
            with half.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows(kept)
        else:
            half.write_text("".join(kept), encoding="utf-8")
        out[task] = half
    return out


def _f(x: Any, digits: int = 2) -> str:
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def write(args: argparse.Namespace, state: dict[str, Any], files: dict[str, Any]) -> None:
    section, out = outputs(args.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # another invocation may have added rows since this one started
        stored = json.loads(out.read_text())
        if stored.get("sizes") == state["sizes"]:
            mine = {r["row"] for r in state["rows"]}
            state["rows"] = [r for r in stored["rows"] if r["row"] not in mine] + state["rows"]
    out.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    ref = state["reference"]
    head = (
        "| row | recipe | rho | params | build s (probe / factorise / align) | distill + L_GA steps | "
        "held-out loss | GSM8K Spearman | GSM8K top-5% | MMLU Spearman | MMLU top-5% | "
        "GSM8K share of top 5% | report: Spearman / top-10% |\n" + "|---" * 13 + "|\n"
    )
    body = f"| full target | - | - | 1.00 | - | - | {ref['heldout_loss']:.2f} | 1 | 1 | 1 | 1 | - | - |\n"
    for r in state["rows"]:
        t = r["timings_s"]
        fid = r.get("fidelity") or {}
        report = f"{_f(fid.get('spearman'))} / {_f(fid.get('top_overlap'))}" if fid else "-"
        body += (
            f"| {r['row']} | {r['recipe']} | {r['sparsity']} | {r['param_share']:.3f} | "
            f"{t['probe']:.0f} / {t['factorise']:.0f} / {t['align']:.0f} | "
            f"{r.get('distill_steps', 0)} + {r['align_steps']} | "
            f"{_f(r['heldout_loss'])} | {r['gsm8k_spearman']:.2f} | {r['gsm8k_top5']:.2f} | "
            f"{r['mmlu_spearman']:.2f} | {r['mmlu_top5']:.2f} | {r['gsm8k_share_top5']:.2f} | "
            f"{report} |\n"
        )
    commands = sorted({r["command"] for r in state["rows"]})
    text = (
        "## Proxy fidelity (`scripts/bench_fidelity.py`"
        + ("" if args.model == DEFAULT_MODEL else f", {args.model}")
        + ")\n\n"
        + "".join(
            f"Command: `.venv/bin/python scripts/bench_fidelity.py {c}`\n\n" for c in commands
        )
        + f"Machine: {platform.processor() or platform.machine()} CPU, {args.threads} torch "
        "threads, a 2-core machine shared with other jobs (build seconds are noisy: the load "
        f"average at each row is in docs/bench/{out.name}). One run per row.\n\n"
        f"Sizes: model `{args.model}`; pool {args.pool_size} records (seeded Dolly-3k slice + "
        f"{files['n_gsm']} GSM8K train, GSM8K share {files['n_gsm'] / args.pool_size:.3f}); "
        f"targets {args.gsm_targets} GSM8K test and {args.mmlu_targets} MMLU dev rows; "
        f"{args.max_length} tokens per sequence; proxies built from {args.build_size} other "
        f"Dolly records (probes and alignment drawn from them by the recipe), held-out loss on "
        f"{args.heldout} more. Reference: exact scores of the full target ({ref['seconds']:.0f} "
        "s). Spearman and top-5% overlap against the reference per task; params: the proxy's "
        "share of the target's parameters (embeddings included).\n\n" + head + body
    )
    print(text)
    write_section(section, text)


if __name__ == "__main__":
    main()
