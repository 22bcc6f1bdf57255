"""The worker tier: the task steps run in-process (messages they send are executed inline) on
a tiny real model, against the service tier's Postgres."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.tiny import save_tiny_model

POOL = [
    {
        "id": f"p{i}",
        "instruction": f"Add {i} and {i + 1}.",
        "output": f"{i} + {i + 1} = {2 * i + 1}.",
    }
    for i in range(4)
] + [
    {"id": "p4", "prompt": "Name a colour of the sky.", "completion": "Blue, on a clear day."},
    {"id": "p5", "prompt": "Say hello in French.", "completion": "Bonjour."},
]
TARGET = [{"question": "What is 2 plus 3?", "answer": "2 + 3 = 5."}]

# Small engine settings so a whole job runs in seconds on two cores.
FAST_PROXY = {"sparsity": 0.5, "probe_samples": 4, "align_steps": 0, "max_length": 48}
FAST_SCORER = {"proj_dim": 64, "batch_size": 2, "max_length": 48}


@pytest.fixture(scope="session")
def tiny_model_dir(svc_roots: dict[str, Path]) -> str:
    return str(save_tiny_model(svc_roots["models"] / "tiny-llama-real", "llama"))


@pytest.fixture
def job_body(data_file: Callable[..., str], tiny_model_dir: str) -> Callable[..., dict[str, Any]]:
    def _body(kind: str = "select", **change: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": kind,
            "dataset_uri": data_file(POOL),
            "target_model": tiny_model_dir,
            "proxy": dict(FAST_PROXY),
        }
        if kind == "select":
            body |= {
                "target_uri": data_file(TARGET),
                "scorer": dict(FAST_SCORER),
                "selection": {"top_k": 3},
            }
        return body | change

    return _body


def read_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
