"""Tiny models and records for the fine-tuning and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import save_tiny_model
from worker.engine.data import Record, record_from_obj
from worker.engine.models import LoadedModel, load_model

QA = [
    {"question": "2 + 2?", "answer": "four"},
    {"question": "Capital of France?", "answer": "Paris"},
    {"question": "Colour of the sky?", "answer": "blue"},
    {"question": "Opposite of hot?", "answer": "cold"},
    {"prompt": "Say hi.", "completion": "hi there"},
    {"instruction": "Name a fruit.", "input": "", "output": "apple"},
]


def qa_records() -> list[Record]:
    return [record_from_obj(obj, i, f"qa[{i}]") for i, obj in enumerate(QA)]


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return save_tiny_model(tmp_path / "tiny", "llama")


@pytest.fixture
def tiny(tiny_dir: Path, tmp_path: Path) -> LoadedModel:
    return load_model(str(tiny_dir), cache_dir=tmp_path / "cache")
