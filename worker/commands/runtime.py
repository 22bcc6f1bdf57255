"""``--device`` and ``--dtype``, shared by every engine command."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.engine.device import Runtime

DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")  # worker.engine.device.DTYPE_CHOICES


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Add ``--device`` and ``--dtype`` (defaults: ``$IPROX_DEVICE`` / ``$IPROX_DTYPE``, else
    ``auto``)."""
    p.add_argument(
        "--device",
        default=os.environ.get("IPROX_DEVICE", "auto"),
        help="auto (CUDA when available, else the CPU), cpu, cuda or cuda:N "
        "(default: $IPROX_DEVICE or auto)",
    )
    p.add_argument(
        "--dtype",
        default=os.environ.get("IPROX_DTYPE", "auto"),
        choices=DTYPE_CHOICES,
        help="model weights' dtype; auto is bfloat16 on CUDA, float32 on the CPU "
        "(default: $IPROX_DTYPE or auto)",
    )


def runtime_of(args: argparse.Namespace) -> Runtime:
    """The resolved runtime; a device that is not there raises ``ConfigError`` (exit 2)."""
    from worker.engine.device import resolve_runtime

    return resolve_runtime(args.device, args.dtype, fields=("--device", "--dtype"))
