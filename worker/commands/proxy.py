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
from dataclasses import fields
from pathlib import Path
from typing import Any

from worker.commands.runtime import add_runtime_args, runtime_of
from worker.engine.proxy.config import METHODS, ProxyConfig

# Config fields exposed as flags (flag name = field name with dashes), with their parsers.
_FLAGS: dict[str, Any] = {
    "sparsity": float,
    "probe_samples": int,
    "probe_positions": int,
    "ridge": float,
    "rank_multiple": int,
    "align_steps": int,
    "align_samples": int,
    "align_batch_size": int,
    "kl_weight": float,
    "temperature": float,
    "lr": float,
    "warmup_fraction": float,
    "batch_size": int,
    "max_length": int,
    "seed": int,
}


def _default(name: str) -> Any:
    return next(f.default for f in fields(ProxyConfig) if f.name == name)


def _help(name: str) -> str:
    # argparse %-formats help strings: a literal % in the config's help ("1% of the pool")
    # would make `iprox proxy build --help` crash.
    return f"{ProxyConfig.help_for(name)} (default: {_default(name)})".replace("%", "%%")


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
    build.add_argument(
        "--method", choices=METHODS, default=_default("method"), help=_help("method")
    )
    for name, parse in _FLAGS.items():
        build.add_argument(
            "--" + name.replace("_", "-"), type=parse, default=_default(name), help=_help(name)
        )
    build.add_argument(
        "--factor-dtype",
        choices=("float64", "float32"),
        default=_default("factor_dtype"),
        help=_help("factor_dtype"),
    )
    build.add_argument("--checkpointing", action="store_true", help=_help("checkpointing"))
    build.add_argument(
        "--target-modules",
        default=",".join(_default("target_modules")),
        help="comma-separated layer-name suffixes to compress",
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

    runtime = runtime_of(args)  # before anything is loaded
    values = {name: getattr(args, name) for name in _FLAGS}
    modules = tuple(m.strip() for m in args.target_modules.split(",") if m.strip())
    config = ProxyConfig(
        method=args.method,
        target_modules=modules,
        factor_dtype=args.factor_dtype,
        checkpointing=args.checkpointing,
        **values,
    )
    records = load_records(args.data)
    print(f"iprox proxy: loading {args.model}", file=sys.stderr, flush=True)
    target = load_model(args.model, cache_dir=args.cache_dir, runtime=runtime)
    proxy = build_proxy(target, records, config, progress=_stderr_progress())
    path = save_proxy(proxy, args.out, storage="standalone" if args.standalone else "factors")
    m = proxy.manifest
    summary = {
        "proxy": str(path),
        "method": m["method"],
        "sparsity": m["sparsity"],
        "target_params": m["target_params"],
        "proxy_params": m["proxy_params"],
        "compressed_layers": m["compressed_layers"],
        "alignment": m["alignment"]["last"],
        "timings_s": m["timings_s"],
        "runtime": runtime.describe(),
    }
    print(json.dumps(summary, indent=2))
    return 0
