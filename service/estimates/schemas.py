"""The body of a ``dry_run`` answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class StageEstimate(BaseModel):
    """One stage's predicted duration and what it was computed from."""

    seconds: float = Field(description="Predicted wall-clock seconds.", examples=[120.5])
    basis: str = Field(
        description="What the prediction scales: the rate and the quantity it multiplies.",
        examples=["4,812,000 tokens x 2.1e-05 s/token"],
    )


class Estimate(BaseModel):
    """What a job would cost, without running it."""

    dry_run: bool = Field(
        True, description="Always true: nothing was stored or queued.", examples=[True]
    )
    samples: int | None = Field(
        description="Pool records (exact for Parquet and Arrow, an upper bound for JSONL: its "
        "lines); null when the API cannot know cheaply.",
        examples=[100000],
    )
    pool_bytes: int | None = Field(description="Size of the pool's data.", examples=[52428800])
    tokens: int | None = Field(
        description="Predicted pool tokens (untruncated), from its size and the tokens per byte "
        "the worker's tokenizer counted on finished jobs' pools.",
        examples=[13107200],
    )
    tokens_error: float = Field(
        description="Relative error bar of ``tokens`` (0.25 is +-25%): the spread of the "
        "calibrations' tokens per byte, at least 25%; 50% from the built-in table.",
        examples=[0.25],
    )
    stages: dict[str, StageEstimate] = Field(
        description="Predicted seconds per stage (loading, warmup, proxy, scoring, ranking).",
        examples=[{"scoring": {"seconds": 120.5, "basis": "4,812,000 tokens x 2.1e-05 s/token"}}],
    )
    total_seconds: float = Field(description="Sum of the stages.", examples=[3600.0])
    calibration: dict[str, Any] = Field(
        description="Where the rates come from: finished jobs on this deployment (their ids, "
        "model, device, dtype), or the built-in table.",
        examples=[{"source": "measured", "jobs": ["3f2a..."], "device": "cpu", "dtype": "float32"}],
    )
