"""Tiny targets wrapped as ``LoadedModel`` and a small pool of chat records."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.tiny import Arch, tiny_model
from worker.engine.data import Record, record_from_obj
from worker.engine.models import LoadedModel

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def pool(n: int = 24) -> list[Record]:
    """Chat records of varied lengths (deterministic)."""
    out = []
    for i in range(n):
        q = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 4))
        a = " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(4 + i % 5))
        out.append(record_from_obj({"id": f"r{i}", "prompt": q, "completion": a}, i, f"pool[{i}]"))
    return out


def loaded(arch: Arch = "llama", seed: int = 0) -> LoadedModel:
    model, tok = tiny_model(arch, seed)
    # A fixed stand-in hash: these models exist only in memory.
    return LoadedModel(
        model, tok, ref=f"tiny-{arch}", identity=f"tiny-{arch}", sha256=f"{seed:064x}"
    )


@pytest.fixture
def records() -> list[Record]:
    return pool()


@pytest.fixture
def make_target() -> Callable[..., LoadedModel]:
    return loaded
