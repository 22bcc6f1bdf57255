"""GPU throughput and memory at 1B-7B scale: random-initialised models shaped like Llama-3.2-1B,
Llama-3.2-3B and Qwen2.5-7B, in bf16, on synthetic pools of 512-token sequences (256 response
tokens). Throughput and memory do not depend on the weights' values, so no download is needed.

Rows per model (each with the peak GPU memory it reached):

* bare forward+backward (weight gradients, no optimizer): the floor of any gradient method;
* scoring, for each scoring mode the engine has (``exact``, ``projected``), samples/s;
* proxy build at rho 0.5 (IPSVD), seconds split into probes / factorisation / alignment steps;
* scoring with that proxy (exact), samples/s.

    python scripts/bench_gpu.py                   # on a GPU: writes docs/bench/gpu.json and
                                                  # the GPU section of docs/benchmarks.md
    python scripts/bench_gpu.py --quick --out X   # a tiny config on the CPU (the tests run it);
                                                  # writes only X, never into docs/

Every row is guarded: an out-of-memory batch is halved and retried (down to 1), any other
failure is recorded in the row, a row that would start past ``--budget-s`` is recorded as
skipped, a proxy build still running ``--grace-s`` after the budget stops at its next layer or
step (recorded as such), and the JSON is rewritten after each row, so a run cut short keeps
what it measured.
Imports only torch, transformers and the project.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.engine.data import IGNORE_INDEX, Example, collate  # noqa: E402
from worker.engine.device import Runtime, resolve_runtime  # noqa: E402
from worker.engine.errors import Cancelled  # noqa: E402
from worker.engine.math.nll import token_mean_loss  # noqa: E402
from worker.engine.proxy.align import align  # noqa: E402
from worker.engine.proxy.compress import compress  # noqa: E402
from worker.engine.proxy.config import ProxyConfig  # noqa: E402
from worker.engine.proxy.probes import collect_probes, select_layers  # noqa: E402
from worker.engine.scoring.config import ScoreConfig  # noqa: E402
from worker.engine.scoring.exact import ExactScorer  # noqa: E402
from worker.engine.scoring.gradients import GradientFeaturizer  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
JSON_OUT = ROOT / "docs" / "bench" / "gpu.json"
BEGIN, END = "<!-- bench:gpu:start -->", "<!-- bench:gpu:end -->"
LAYERS = ScoreConfig().layers

# Shapes from the models' published configs (hidden, MLP, layers, heads, KV heads, vocab, tied).
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.2-1b": (
        "llama",
        dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
             tie_word_embeddings=True, rope_theta=500000.0),
    ),
    "llama-3.2-3b": (
        "llama",
        dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
             num_attention_heads=24, num_key_value_heads=8, vocab_size=128256,
             tie_word_embeddings=True, rope_theta=500000.0),
    ),
    "qwen2.5-7b": (
        "qwen2",
        dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
             num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
             tie_word_embeddings=False, rope_theta=1000000.0),
    ),
}  # fmt: skip
QUICK_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-llama": (
        "llama",
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    seq: int  # tokens per sequence
    response: int  # of which response tokens (the loss)
    batch: int  # sequences per pass
    warmup: int  # untimed batches before each timed row
    batches: int  # timed batches per row
    proj_dim: int
    probe_samples: int
    probe_positions: int
    align_steps: int
    align_batch: int
    # distillation steps before alignment (the iprox recipe's 200 would dominate a timing run;
    # a few give its per-step cost)
    distill_steps: int = 0


FULL = Sizes(512, 256, 8, 2, 8, 8192, 32, 16, 20, 4, 20)
QUICK = Sizes(48, 24, 4, 1, 2, 256, 8, 8, 2, 2, 2)


@dataclass
class Report:
    """What the run measured; written after every row."""

    command: str
    runtime: Runtime
    sizes: Sizes
    out: Path | None
    models: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "machine": machine(self.runtime),
            "sizes": self.sizes.__dict__,
            "models": self.models,
        }

    def save(self) -> None:
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def machine(runtime: Runtime) -> dict[str, Any]:
    import transformers

    out: dict[str, Any] = {
        **runtime.describe(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
    }
    if runtime.device.type == "cuda":
        props = torch.cuda.get_device_properties(runtime.device)
        out["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return out


def random_model(arch: str, shape: dict[str, Any], runtime: Runtime) -> nn.Module:
    """A randomly initialised causal LM built directly on the device in the runtime's dtype."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[arch]
    config = config_cls(max_position_embeddings=4096, **shape)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(runtime.dtype)
    try:
        with torch.device(runtime.device):
            torch.manual_seed(0)
            model = model_cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def synthetic_pool(n: int, sizes: Sizes, vocab: int, seed: int) -> list[Example]:
    """``n`` sequences of ``sizes.seq`` random tokens whose last ``sizes.response`` carry loss."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(1, vocab, (n, sizes.seq), generator=gen, device="cpu").tolist()
    prompt = sizes.seq - sizes.response
    return [
        Example(i, f"s{i}", row, [IGNORE_INDEX] * prompt + row[prompt:], truncated=False)
        for i, row in enumerate(ids)
    ]


def sync(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def reset_peak(runtime: Runtime) -> None:
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(runtime.device)


def peak_gib(runtime: Runtime) -> float | None:
    if runtime.device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(runtime.device) / 2**30, 2)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def throughput(
    step: Callable[[dict[str, torch.Tensor]], Any],
    pool: list[Example],
    sizes: Sizes,
    runtime: Runtime,
) -> dict[str, Any]:
    """samples/s of ``step`` over ``sizes.batches`` timed batches (after ``sizes.warmup``),
    halving the batch on out-of-memory down to 1."""
    batch = sizes.batch
    while True:
        try:
            batches = [
                collate(pool[i : i + batch], 0, runtime.device)
                for i in range(0, batch * (sizes.warmup + sizes.batches), batch)
            ]
            for b in batches[: sizes.warmup]:
                step(b)
            sync(runtime)
            reset_peak(runtime)
            start = time.perf_counter()
            for b in batches[sizes.warmup :]:
                step(b)
            sync(runtime)
            seconds = time.perf_counter() - start
            samples = batch * sizes.batches
            return {
                "samples_per_s": round(samples / seconds, 3),
                "seconds": round(seconds, 3),
                "samples": samples,
                "batch": batch,
                "peak_gib": peak_gib(runtime),
            }
        except Exception as exc:
            if not _is_oom(exc) or batch == 1:
                raise
            batches = []
            reset_peak(runtime)
            batch //= 2


def bare_step(model: nn.Module) -> Callable[[dict[str, torch.Tensor]], None]:
    params = [p for p in model.parameters()]

    def step(batch: dict[str, torch.Tensor]) -> None:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            token_mean_loss(logits.logits, batch["labels"]).backward()  # type: ignore[no-untyped-call]
        model.zero_grad(set_to_none=True)

    return step


def exact_step(model: nn.Module, target: list[Example], runtime: Runtime) -> Callable[..., Any]:
    scorer = ExactScorer(model, LAYERS)
    batches = [collate(target[i : i + 4], 0, runtime.device) for i in range(0, len(target), 4)]
    vectors = scorer.target_vectors([batches], normalize=True)
    return lambda batch: scorer(batch, vectors)


def projected_step(model: nn.Module, sizes: Sizes) -> Callable[..., Any]:
    featurizer = GradientFeaturizer(model, LAYERS, sizes.proj_dim, seed=0)
    return featurizer


def proxy_build(
    model: nn.Module,
    pool: list[Example],
    sizes: Sizes,
    runtime: Runtime,
    should_stop: Callable[[], bool] | None = None,
    row: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """An IPSVD rho 0.5 proxy of ``model``: seconds and peak memory of each phase, filled into
    ``row`` as they finish. ``should_stop`` is checked between batches, layers and steps."""
    config = ProxyConfig(
        method="ipsvd",
        sparsity=0.5,
        probe_samples=sizes.probe_samples,
        probe_positions=sizes.probe_positions,
        align_steps=sizes.align_steps,
        distill_steps=sizes.distill_steps,
        align_batch_size=sizes.align_batch,
        batch_size=sizes.align_batch,
        max_length=sizes.seq,
    )
    layers = select_layers(model, config.target_modules)
    row = row if row is not None else {}
    row.update(layers=len(layers), config=config.to_dict())
    probe_set = pool[: sizes.probe_samples]
    align_set = pool[sizes.probe_samples : sizes.probe_samples + 8 * sizes.align_batch]

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        reset_peak(runtime)
        start = time.perf_counter()
        out = fn()
        sync(runtime)
        row[f"{name}_s"] = round(time.perf_counter() - start, 3)
        row[f"{name}_peak_gib"] = peak_gib(runtime)
        return out

    probes = phase(
        "probes",
        lambda: collect_probes(
            model,
            layers,
            probe_set,
            pad_id=0,
            positions_per_sequence=config.probe_positions,
            batch_size=config.batch_size,
            seed=config.seed,
            should_stop=should_stop,
        ),
    )
    row["probe_columns"] = probes.columns
    proxy, _ = phase(
        "factorise", lambda: compress(model, layers, config, probes, should_stop=should_stop)
    )
    history = phase(
        "align",
        lambda: align(model, proxy, align_set, config, pad_id=0, should_stop=should_stop),
    )
    ga = [h for h in history if not h.get("distill")]
    row["align_steps"] = len(ga)
    row["distill_steps"] = len(history) - len(ga)
    row["align_first_last_ga"] = [ga[0]["ga"], ga[-1]["ga"]] if ga else None
    return proxy, row


def bench_model(
    name: str,
    arch: str,
    shape: dict[str, Any],
    sizes: Sizes,
    report: Report,
    deadline: float,
    hard_deadline: float,
) -> None:
    runtime = report.runtime
    entry: dict[str, Any] = {"model": name, "shape": shape, "rows": {}}
    report.models.append(entry)
    rows: dict[str, Any] = entry["rows"]

    def guarded(label: str, fn: Callable[[], Any]) -> Any:
        if time.perf_counter() > deadline:
            rows[label] = {"skipped": "time budget (--budget-s) spent before this row"}
            report.save()
            return None
        print(f"bench_gpu: {name}: {label}", file=sys.stderr, flush=True)
        try:
            out = fn()
        except Cancelled as exc:  # a proxy build past the hard deadline: keep its phases
            rows.setdefault(label, {})["stopped"] = f"time budget: {exc.message}"
            out = None
        except Exception as exc:
            rows[label] = {"failed": f"{type(exc).__name__}: {exc}"[:500]}
            traceback.print_exc()
            out = None
        report.save()
        return out

    reset_peak(runtime)
    start = time.perf_counter()
    model = random_model(arch, shape, runtime)
    sync(runtime)
    entry["params"] = sum(p.numel() for p in model.parameters())
    entry["init_s"] = round(time.perf_counter() - start, 2)
    entry["weights_gib"] = peak_gib(runtime)
    vocab = int(shape["vocab_size"])
    pool = synthetic_pool(sizes.batch * (sizes.warmup + sizes.batches), sizes, vocab, seed=1)
    target = synthetic_pool(8, sizes, vocab, seed=2)

    def run(label: str, step: Callable[[], Callable[..., Any]]) -> None:
        rows[label] = throughput(step(), pool, sizes, runtime)

    guarded("bare_fwd_bwd", lambda: run("bare_fwd_bwd", lambda: bare_step(model)))
    guarded("score_exact", lambda: run("score_exact", lambda: exact_step(model, target, runtime)))
    guarded("score_projected", lambda: run("score_projected", lambda: projected_step(model, sizes)))
    build_pool = synthetic_pool(sizes.probe_samples + 8 * sizes.align_batch, sizes, vocab, 3)

    def build() -> nn.Module:
        row = rows["proxy_build"] = {}
        stop = lambda: time.perf_counter() > hard_deadline  # noqa: E731
        proxy, _ = proxy_build(model, build_pool, sizes, runtime, stop, row)
        return proxy

    proxy = guarded("proxy_build", build)
    if proxy is not None:
        guarded(
            "proxy_score_exact",
            lambda: run("proxy_score_exact", lambda: exact_step(proxy, target, runtime)),
        )
    # The model and proxy go with this frame; the next model's reset_peak collects them.


def markdown(data: dict[str, Any]) -> str:
    """The section of docs/benchmarks.md for a run's JSON."""
    m, s = data["machine"], data["sizes"]
    lines = [
        "## GPU throughput and memory (`scripts/bench_gpu.py`)",
        "",
        f"Command: `{data['command']}`. Machine: {m.get('gpu', m['device'])} "
        f"({m.get('gpu_memory_gib')} GiB), torch {m['torch']} (CUDA {m['cuda']}), "
        f"transformers {m['transformers']}, dtype {m['dtype']}. Random-initialised models of "
        f"the shapes named, synthetic sequences of {s['seq']} tokens ({s['response']} response "
        f"tokens carrying the loss), batch {s['batch']} (halved on out-of-memory), "
        f"{s['warmup']} warm-up and {s['batches']} timed batches per row, one run. Peak memory "
        "is `torch.cuda.max_memory_allocated` during the row (weights included).",
        "",
        "| model | params | bare fwd+bwd samples/s (peak GiB) | exact scoring | projected "
        f"scoring (d={s['proj_dim']}) | proxy build s: probes / factorise / "
        f"{s.get('distill_steps', 0)} distillation + {s['align_steps']} align steps (peak GiB) | "
        "rho 0.5 proxy exact scoring |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(row: dict[str, Any] | None) -> str:
        if row is None:
            return "not run"
        if "failed" in row or "skipped" in row:
            return row.get("failed") or row["skipped"]
        peak = row["peak_gib"] if row["peak_gib"] is not None else "n/a"
        return f"{row['samples_per_s']:.2f} ({peak}; batch {row['batch']})"

    for entry in data["models"]:
        r = entry["rows"]
        b = r.get("proxy_build")
        if b is not None and "stopped" in b:
            done = ", ".join(
                f"{k} {b[f'{k}_s']} s" for k in ("probes", "factorise") if f"{k}_s" in b
            )
            build = f"stopped at the time budget ({b['stopped']}; done: {done or 'nothing'})"
        elif b is None or "failed" in b or "skipped" in b:
            build = cell(b)
        else:
            peaks = [b[f"{k}_peak_gib"] for k in ("probes", "factorise", "align")]
            peak = max((x for x in peaks if x is not None), default="n/a")
            build = f"{b['probes_s']} / {b['factorise_s']} / {b['align_s']} ({peak})"
        lines.append(
            f"| {entry['model']} | {entry['params'] / 1e9:.2f}B | {cell(r.get('bare_fwd_bwd'))} "
            f"| {cell(r.get('score_exact'))} | {cell(r.get('score_projected'))} | {build} "
            f"| {cell(r.get('proxy_score_exact'))} |"
        )
    lines += [
        "",
        "Read against the goals of issue 11: scoring <= 1.5x the time of the bare pass "
        "(samples/s >= 1/1.5 of it), rho 0.5 proxy scoring >= 1.8x the target's samples/s at "
        "3B, peak memory of scoring <= 1.3x that of the bare pass. `docs/bench/gpu.json` holds "
        "every row, with the failures and skips of the run.",
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str, doc: Path = DOC) -> None:
    """Replace the text between the bench:gpu markers of ``doc`` (appended when absent)."""
    body = doc.read_text(encoding="utf-8")
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in body and END in body:
        head, rest = body.split(BEGIN, 1)
        body = head + block + rest.split(END, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny config on the CPU; nothing in docs/")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON to write (default: docs/bench/gpu.json; --quick: none)",
    )
    p.add_argument("--models", default=None, help=f"comma-separated subset of {', '.join(SHAPES)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--budget-s", type=float, default=400.0, help="no row starts after this")
    p.add_argument(
        "--grace-s", type=float, default=45.0, help="a proxy build stops this long past the budget"
    )
    args = p.parse_args(argv)
    command = "python scripts/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.quick:
        runtime = resolve_runtime("cpu", args.dtype)
        shapes, sizes, out = QUICK_SHAPES, QUICK, args.out
    else:
        runtime = resolve_runtime(args.device, args.dtype)
        if runtime.device.type != "cuda":
            p.error("the full benchmark needs a GPU (--device cuda); use --quick on the CPU")
        shapes, sizes, out = SHAPES, FULL, args.out or JSON_OUT
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = sorted(set(names) - set(shapes))
        if unknown:
            p.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(shapes)}")
        shapes = {n: shapes[n] for n in names}
    report = Report(command.strip(), runtime, sizes, out)
    deadline = time.perf_counter() + args.budget_s
    for name, (arch, shape) in shapes.items():
        bench_model(name, arch, shape, sizes, report, deadline, deadline + args.grace_s)
    report.save()
    data = report.to_dict()
    print(json.dumps(data, indent=2))
    if not args.quick:
        write_section(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
