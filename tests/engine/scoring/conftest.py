"""Fixtures for scoring tests: a tiny model and small pool / target files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.tiny import tiny_model

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "stone",
    "cloud",
    "maple",
    "quartz",
    "violet",
    "ember",
    "harbor",
]


def pool_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Varied instruction/response records (deterministic)."""
    rows = []
    for i in range(n):
        a, b, c = (WORDS[(seed + i * k) % len(WORDS)] for k in (1, 3, 7))
        rows.append(
            {
                "id": f"p{i}",
                "instruction": f"Tell me about {a} and {b}.",
                "output": f"{c} {a} " * (1 + i % 3),
                "source": "pool" if i % 2 else "other",
            }
        )
    return rows


def target_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "question": f"What is {i} plus {i + 2}?",
            "answer": f"{i} + {i + 2} = {2 * i + 2}. #### {2 * i + 2}",
        }
        for i in range(n)
    ]


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def model_and_tok():  # type: ignore[no-untyped-def]
    return tiny_model("llama", seed=0)
