"""Benchmark: fine-tune the target on each selector's 5% of the pool, evaluate on the target task.

Selectors: random (several seeds); the full target model (TracIn, the costly reference); IProX
proxies (IPSVD + alignment) at each rho (several seeds at rho 0.5); a plain-SVD proxy at rho 0.5
(IPSVD ablation); IPSVD without alignment at rho 0.5 (alignment ablation); and a "small model"
not derived by IPSVD: the target with every other decoder layer removed, standing in for the
paper's off-the-shelf small proxy. Tasks: GSM8K (target = first test records, evaluation = other
test records) and MMLU (target = dev rows, evaluation = test rows drawn across subjects with a
fixed seed). Every selected subset is fine-tuned with the same recipe and evaluated by the
per-example NLL of the reference answers (mean +- SE) and, on MMLU, accuracy.

Writes a table into the ``bench:downstream`` section of docs/benchmarks.md, the rows into
docs/bench/downstream.json and a quality-vs-selection-cost plot beside it. ``--quick`` is a
smoke setting (minutes on SmolLM2, seconds on a tiny model) that writes nothing into docs/
unless --markdown/--results are given.

    .venv/bin/python scripts/bench_downstream.py             # the benchmark (sizes below)
    .venv/bin/python scripts/bench_downstream.py --quick     # smoke run
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from downstream_report import markdown, plot, summarise, write_section  # noqa: E402
from downstream_sizes import FULL, QUICK, Sizes  # noqa: E402

from worker.engine.data import Record, load_records  # noqa: E402
from worker.engine.lowrank import parameter_count  # noqa: E402
from worker.engine.models import LoadedModel, load_model  # noqa: E402
from worker.engine.proxy import ProxyConfig, build_proxy  # noqa: E402
from worker.engine.scoring import ScoreConfig, SelectionConfig, rank, score_stream  # noqa: E402
from worker.engine.scoring.store import tensor_fingerprint  # noqa: E402
from worker.engine.train import (  # noqa: E402
    FinetuneConfig,
    evaluate,
    finetune,
    sample_records,
    warmup,
)

LETTERS = ("A", "B", "C", "D")


# ---------------------------------------------------------------------------------------------
# Data: the pool, target sets and evaluation sets, written into the work directory


def _mmlu_dir(records: Sequence[Record], out: Path) -> Path:
    """MMLU records back as one headerless CSV per subject (what the MMLU reader expects)."""
    out.mkdir(parents=True, exist_ok=True)
    by_subject: dict[str, list[Record]] = {}
    for r in records:
        by_subject.setdefault(str(r.fields["subject"]), []).append(r)
    for subject, rows in by_subject.items():
        with (out / f"{subject}_test.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            for r in rows:
                w.writerow([r.fields["question"], *r.fields["choices"], r.fields["answer"]])
    return out


def prepare_data(data_root: Path, work: Path, s: Sizes) -> dict[str, Path]:
    dolly = json.loads((data_root / "dolly" / "dolly_3k.json").read_text(encoding="utf-8"))
    gsm_train = load_records(data_root / "gsm8k" / "train.jsonl")
    gsm_test = load_records(data_root / "gsm8k" / "test.jsonl")
    g = torch.Generator().manual_seed(0)
    pool = [
        {**dolly[i], "id": f"dolly-{i}", "source": "dolly"}
        for i in sorted(torch.randperm(len(dolly), generator=g)[: s.pool_dolly].tolist())
    ]
    pool += [
        {"question": r.fields["question"], "answer": r.fields["answer"], "id": f"gsm8k-{r.index}"}
        | {"source": "gsm8k"}
        for r in sample_records(gsm_train, s.pool_gsm, seed=0)
    ]
    files = {"pool": work / "pool.jsonl"}
    files["pool"].write_text("".join(json.dumps(o) + "\n" for o in pool), encoding="utf-8")
    target, rest = gsm_test[: s.gsm_targets], gsm_test[s.gsm_targets :]
    for name, recs in (
        ("gsm8k_target", target),
        ("gsm8k_eval", sample_records(rest, s.gsm_eval, 0)),
    ):
        files[name] = work / f"{name}.jsonl"
        files[name].write_text(
            "".join(json.dumps(dict(r.fields)) + "\n" for r in recs), encoding="utf-8"
        )
    dev = load_records(data_root / "mmlu" / "dev")
    mmlu_target = sample_records(dev, min(s.mmlu_targets, len(dev)), seed=0)
    files["mmlu_target"] = _mmlu_dir(mmlu_target, work / "mmlu_target")
    test = load_records(data_root / "mmlu" / "test")
    files["mmlu_eval"] = _mmlu_dir(sample_records(test, s.mmlu_eval, seed=0), work / "mmlu_eval")
    return files


# ---------------------------------------------------------------------------------------------
# Selectors: each returns a model to score with (and its build time), or None for random


def drop_layers(target: LoadedModel) -> nn.Module:
    """The target with every other decoder layer removed (a smaller model not built by IPSVD)."""
    model: Any = copy.deepcopy(target.model)
    kept = list(model.model.layers)[::2]
    model.model.layers = nn.ModuleList(kept)
    for new_idx, layer in enumerate(kept):
        if hasattr(layer, "self_attn"):
            layer.self_attn.layer_idx = new_idx
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[::2]
    cfg.num_hidden_layers = len(kept)
    return model.eval()


def warmed_up(
    target: LoadedModel, pool: list[Record], s: Sizes, out: Path
) -> tuple[LoadedModel, float]:
    """The model selectors score with: the target after the paper's brief warm-up on a random
    slice of the pool (one epoch, the fine-tuning recipe), or the target itself."""
    if s.warmup_fraction <= 0:
        target.model.requires_grad_(True)
        return target, 0.0
    t0 = time.perf_counter()
    recipe = FinetuneConfig(epochs=1, lr=s.ft_lr, batch_size=s.ft_batch, max_length=s.max_length)
    result = warmup(target, pool, recipe, out, fraction=s.warmup_fraction, checkpoints=1)
    result.model.requires_grad_(True)
    warm = LoadedModel(
        model=result.model,  # type: ignore[arg-type]
        tokenizer=target.tokenizer,
        ref=str(out),
        identity=str(out),
        sha256=f"warmup-of-{target.sha256}",
    )
    return warm, time.perf_counter() - t0


@dataclass(frozen=True)
class Selector:
    name: str
    rho: float | None
    seed: int
    build: Callable[[], nn.Module] | None  # None: random selection


def selectors(target: LoadedModel, pool: list[Record], s: Sizes) -> list[Selector]:
    def proxy(method: str, rho: float, seed: int, align: bool = True) -> Callable[[], nn.Module]:
        cfg = ProxyConfig(
            method=method,  # type: ignore[arg-type]
            sparsity=rho,
            probe_samples=s.probe_samples,
            align_steps=s.align_steps if align else 0,
            max_length=s.max_length,
            seed=seed,
        )
        return lambda: build_proxy(target, pool, cfg).model

    out = [Selector("random", None, seed, None) for seed in range(s.random_seeds)]
    out.append(Selector("full-target", None, 0, lambda: target.model))
    for rho in s.rhos:
        seeds = range(s.proxy_seeds) if rho == 0.5 else range(1)
        out += [Selector("iprox", rho, seed, proxy("ipsvd", rho, seed)) for seed in seeds]
    out.append(Selector("svd+align", 0.5, 0, proxy("svd", 0.5, 0)))
    out.append(Selector("ipsvd-no-align", 0.5, 0, proxy("ipsvd", 0.5, 0, align=False)))
    out.append(Selector("half-layers", None, 0, lambda: drop_layers(target)))
    return out


# ---------------------------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace, s: Sizes) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="bench-downstream-", dir=args.work_dir))
    try:
        files = prepare_data(args.data_root, work, s)
        target = load_model(args.model)
        pool = load_records(files["pool"])
        k = math.ceil(s.fraction * len(pool))
        scorer, warmup_s = warmed_up(target, pool, s, work / "warmup")
        tasks = {"gsm8k": ("gsm8k_target", "gsm8k_eval"), "mmlu": ("mmlu_target", "mmlu_eval")}
        evals = {t: load_records(files[e]) for t, (_, e) in tasks.items()}
        recipe = FinetuneConfig(
            epochs=s.ft_epochs, lr=s.ft_lr, batch_size=s.ft_batch, max_length=s.eval_max_length
        )
        # Projected features, as when the published table was measured: the store lets the two
        # target tasks share the pool's gradients.
        score_cfg = ScoreConfig(
            features="projected", proj_dim=s.proj_dim, max_length=s.max_length, batch_size=4
        )
        rows = _baseline_rows(target, evals, s)
        target_params = parameter_count(target.model)
        for sel in selectors(scorer, pool, s):
            t0 = time.perf_counter()
            model = sel.build() if sel.build is not None else None
            build_s = time.perf_counter() - t0
            params = parameter_count(model) if model is not None else None
            store = work / "store" / f"{sel.name}-{sel.rho}-{sel.seed}"
            for task, (tgt, _) in tasks.items():
                t0 = time.perf_counter()
                if model is None:
                    chosen = sample_records(pool, k, seed=sel.seed)
                else:
                    scores: dict[int, float] = {}
                    model_hash = f"{sel.name}:{tensor_fingerprint(model)}"
                    for b in score_stream(
                        model, scorer.tokenizer, model_hash, files["pool"], [files[tgt]],
                        score_cfg, store_dir=store,
                    ):  # fmt: skip
                        scores.update(zip(b.indices, b.scores, strict=True))
                    ranked = rank(files["pool"], scores, SelectionConfig(top_k=k))
                    chosen = [pool[r.index] for r in ranked]
                score_s = time.perf_counter() - t0
                row = _train_and_eval(target, chosen, recipe, evals[task], work / "ft", s)
                row.update(
                    selector=sel.name, rho=sel.rho, seed=sel.seed, task=task,
                    proxy_params=params, target_params=target_params,
                    build_seconds=build_s, scoring_seconds=score_s,
                    selection_seconds=(build_s + score_s) if model is not None else 0.0,
                    selected=len(chosen), warmup_seconds=warmup_s,
                    gsm8k_share=sum(r.id.startswith("gsm8k") for r in chosen) / len(chosen),
                )  # fmt: skip
                rows.append(row)
                print(
                    json.dumps({k: v for k, v in row.items() if k != "per_example_nll"}), flush=True
                )
            del model
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _eval_fields(report: Any) -> dict[str, Any]:
    return {
        "nll": report.nll,
        "nll_se": report.nll_se,
        "accuracy": report.accuracy,
        "accuracy_se": report.accuracy_se,
        "n_eval": report.n,
    }


def _baseline_rows(
    target: LoadedModel, evals: dict[str, list[Record]], s: Sizes
) -> list[dict[str, Any]]:
    """The target before any fine-tuning, for reference."""
    rows = []
    for task, recs in evals.items():
        rep = evaluate(target.model, target.tokenizer, recs, max_length=s.eval_max_length)
        rows.append(
            {"selector": "no-finetune", "rho": None, "seed": None, "task": task,
             "selection_seconds": None, **_eval_fields(rep)}
        )  # fmt: skip
    return rows


def _train_and_eval(
    target: LoadedModel,
    chosen: list[Record],
    recipe: FinetuneConfig,
    eval_records: list[Record],
    out: Path,
    s: Sizes,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = finetune(target, chosen, recipe, out)
    ft_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = evaluate(result.model, target.tokenizer, eval_records, max_length=s.eval_max_length)
    row = {**_eval_fields(rep), "finetune_seconds": ft_s, "eval_seconds": time.perf_counter() - t0}
    row["per_example_nll"] = [e.nll for e in rep.examples]
    shutil.rmtree(out, ignore_errors=True)  # a full model per run: do not keep them
    return row


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--quick", action="store_true", help="smoke sizes; writes no docs by default")
    p.add_argument("--markdown", type=Path, default=None, help="default: docs/benchmarks.md")
    p.add_argument("--results", type=Path, default=None, help="default: docs/bench/")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch space (default: tmp)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    torch.manual_seed(0)
    started = time.perf_counter()
    rows = run(args, sizes)
    lines = summarise(rows)
    command = "python scripts/bench_downstream.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    text = markdown(lines, command.strip(), asdict(sizes), rows)
    text += f"\nWall time of the whole run: {time.perf_counter() - started:.0f} s.\n"
    print(text)
    markdown_path = args.markdown or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    results = args.results or (None if args.quick else ROOT / "docs" / "bench")
    if markdown_path is not None:
        write_section(markdown_path, text)
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        (results / "downstream.json").write_text(
            json.dumps(rows, indent=1) + "\n", encoding="utf-8"
        )
        plot(lines, results / "downstream.png")
    return rows


if __name__ == "__main__":
    main()
