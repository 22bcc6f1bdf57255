"""``iprox proxy build``: compress a model into an aligned low-rank proxy and save it.

Writes ``OUT/proxy.json`` (method, sparsity, ranks, parameter counts, target identity and hash,
probe and alignment settings) and the weights; progress goes to stderr, a JSON summary to
stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.commands.runtime import add_runtime_args, runtime_of
from worker.engine.params import add_flag, default_of, help_of
from worker.engine.proxy.config import RECIPES, ProxyConfig

# Config fields exposed as flags (flag name = field name with dashes); each flag's type, choices
# and help come from the field. Their defaults are None here: an unset flag takes the recipe's
# value, so --recipe official stays official.
_FLAGS: tuple[str, ...] = (
    "sparsity",
    "rank_rule",
    "rank_multiple",
    "rank_allocation",
    "rank_floor",
    "probe_samples",
    "probe_tokens",
    "probe_positions",
    "ridge_mode",
    "ridge",
    "align_steps",
    "align_epochs",
    "align_samples",
    "align_fraction",
    "align_batch_size",
    "align_max_length",
    "align_hvp",
    "align_fd_step",
    "distill_steps",
    "distill_lr",
    "hidden_weight",
    "ga_weight",
    "ga_unit",
    "gram_weight",
    "delta_weight",
    "kl_weight",
    "temperature",
    "lr",
    "lr_schedule",
    "warmup_fraction",
    "weight_decay",
    "batch_size",
    "max_length",
    "seed",
    "fidelity_samples",
    "fidelity_targets",
)


def _default(name: str) -> Any:
    return default_of(ProxyConfig, name)


def _help(name: str) -> str:
    # argparse %-formats help strings: a literal % in the config's help ("1% of the pool")
    # would make `iprox proxy build --help` crash.
    text = f"{help_of(ProxyConfig, name)} (iprox recipe: {default_of(ProxyConfig, name)})"
    return text.replace("%", "%%")


def register(subparsers: Any) -> None:
    proxy = subparsers.add_parser("proxy", help="build influence-preserving proxies")
    sub = proxy.add_subparsers(dest="proxy_command", required=True, metavar="ACTION")
    build = sub.add_parser(
        "build",
        help="compress a model into a low-rank proxy and align it",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument(
        "--model",
        required=True,
        help="preset name, local HF directory, .gguf file or hub id org/name[@revision]",
    )
    build.add_argument(
        "--data", type=Path, required=True, help="records to probe and align with (any format)"
    )
    build.add_argument("--out", type=Path, required=True, help="directory to write the proxy to")
    build.add_argument("--recipe", choices=RECIPES, default="iprox", help=_help("recipe"))
    add_flag(build, ProxyConfig, "method")
    for name in _FLAGS:
        add_flag(build, ProxyConfig, name, default=None)
    build.add_argument(
        "--balance", action=argparse.BooleanOptionalAction, default=None, help=_help("balance")
    )
    add_flag(build, ProxyConfig, "factor_dtype")
    build.add_argument("--checkpointing", action="store_true", help=_help("checkpointing"))
    build.add_argument(
        "--target-modules",
        default=",".join(_default("target_modules")),
        help="comma-separated layer-name suffixes to compress",
    )
    build.add_argument(
        "--target",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a target-task file the fidelity report scores against (repeatable; the files' "
        "records together form one target set); default: a slice of --data",
    )
    build.add_argument(
        "--standalone",
        action="store_true",
        help="store the whole proxy (config, tokenizer, all weights), not just the factors",
    )
    build.add_argument("--cache-dir", type=Path, default=None, help="model cache directory")
    add_runtime_args(build)
    build.set_defaults(func=_build)


def _stderr_progress() -> Any:
    last: dict[str, float] = {}

    def progress(
        stage: str, done: int, total: int, metrics: Mapping[str, float] | None = None
    ) -> None:
        now = time.monotonic()
        # At most a line a second per stage, plus the last one: readable, not a flood. A tick
        # with metrics (alignment losses) is always printed.
        if metrics or done == total or now - last.get(stage, 0.0) >= 1.0:
            last[stage] = now
            extra = "".join(f" {k}={v:.4g}" for k, v in (metrics or {}).items())
            print(f"iprox proxy: {stage} {done}/{total}{extra}", file=sys.stderr, flush=True)

    return progress


def _build(args: argparse.Namespace) -> int:
    from worker.engine.data import load_records
    from worker.engine.models import load_model
    from worker.engine.proxy import build_proxy, save_proxy
    from worker.engine.proxy.fidelity import summary_line, without_record_ids

    runtime = runtime_of(args)  # before anything is loaded
    names = (*_FLAGS, "balance")
    values = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    modules = tuple(m.strip() for m in args.target_modules.split(",") if m.strip())
    config = ProxyConfig.for_recipe(
        args.recipe,
        method=args.method,
        target_modules=modules,
        factor_dtype=args.factor_dtype,
        checkpointing=args.checkpointing,
        **values,
    )
    records = load_records(args.data)
    targets = [r for path in args.target for r in load_records(path)] or None
    print(f"iprox proxy: loading {args.model}", file=sys.stderr, flush=True)
    target = load_model(args.model, cache_dir=args.cache_dir, runtime=runtime)
    proxy = build_proxy(target, records, config, progress=_stderr_progress(), targets=targets)
    path = save_proxy(proxy, args.out, storage="standalone" if args.standalone else "factors")
    m = proxy.manifest
    summary = {
        "proxy": str(path),
        "recipe": m["recipe"],
        "method": m["method"],
        "sparsity": m["sparsity"],
        "ranks_by_type": m["ranks_by_type"],
        "target_params": m["target_params"],
        "proxy_params": m["proxy_params"],
        "compressed_layers": m["compressed_layers"],
        "alignment": m["alignment"]["last"],
        "timings_s": m["timings_s"],
        "runtime": runtime.describe(),
        "fidelity": without_record_ids(m.get("fidelity")),
    }
    print(f"iprox proxy: {summary_line(m.get('fidelity'))}", file=sys.stderr, flush=True)
    print(json.dumps(summary, indent=2))
    return 0
