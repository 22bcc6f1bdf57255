"""Response bodies of /proxies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.pagination import Page


class FidelitySlice(BaseModel):
    """The records one side of the fidelity report scored."""

    records: int = Field(
        description="Records scored (fewer than requested when the pool had fewer).",
        examples=[64],
    )
    requested: int = Field(
        description="Records asked for (fidelity_samples or fidelity_targets).", examples=[64]
    )
    tokens: int = Field(
        description="Tokens in those records, after truncation to max_length.", examples=[6144]
    )
    record_ids: list[str] = Field(
        description="Their record ids, in draw order.", examples=[["dolly-17", "gsm8k-3"]]
    )


class FidelityCalibration(FidelitySlice):
    """The pool records both models scored (the calibration slice)."""

    eligible_pool_records: int = Field(
        description="Pool records that are neither probe nor alignment records.",
        examples=[1200],
    )


class FidelityTargets(FidelitySlice):
    """The target records both models scored against."""

    source: Literal["job", "pool"] = Field(
        description="job: a seeded sample of the job's target set; pool: pool records, disjoint "
        "from the calibration, probe and alignment records, as their own target.",
        examples=["job"],
    )
    available: int | None = Field(
        description="Records in the job's target set (pool: null).", examples=[200]
    )


class FidelityCost(BaseModel):
    """What scoring the calibration slice exactly cost one model, on the worker that built it."""

    seconds_per_sample: float = Field(
        description="Seconds per calibration record scored.", examples=[0.83]
    )
    calibration_s: float = Field(
        description="Seconds to score the calibration slice.", examples=[53.1]
    )
    target_set_s: float = Field(
        description="Seconds to build the target set's vector.", examples=[55.6]
    )
    scored_params: int = Field(
        description="Parameters whose gradients are scored.", examples=[106168320]
    )


class FidelityRead(BaseModel):
    """Does the proxy rank data like its target? Both score a calibration slice of the pool
    exactly (TracIn cosine against the target set); ``spearman`` and ``top_overlap`` compare
    the two rankings (1.0: the same). Read it before scoring a large pool with the proxy."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "status": "measured",
                "reason": None,
                "spearman": 0.62,
                "top_overlap": 0.5,
                "top_fraction": 0.1,
                "top_k": 6,
                "speedup": 0.95,
                "seconds": 224.0,
                "seed": 0,
                "max_length": 256,
                "batch_size": 8,
                "layers": [
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "o_proj",
                    "gate_proj",
                    "up_proj",
                    "down_proj",
                ],
                "skipped_records": 0,
                "calibration": {
                    "records": 64,
                    "requested": 64,
                    "tokens": 6144,
                    "eligible_pool_records": 1200,
                    "record_ids": ["dolly-17", "gsm8k-3"],
                },
                "targets": {
                    "source": "job",
                    "records": 32,
                    "requested": 32,
                    "available": 200,
                    "tokens": 3072,
                    "record_ids": ["dev-0", "dev-5"],
                },
                "target": {
                    "seconds_per_sample": 0.83,
                    "calibration_s": 53.1,
                    "target_set_s": 55.6,
                    "scored_params": 106_168_320,
                },
                "proxy": {
                    "seconds_per_sample": 0.88,
                    "calibration_s": 56.3,
                    "target_set_s": 57.9,
                    "scored_params": 52_997_760,
                },
            }
        }
    )

    status: Literal["measured", "skipped", "failed"] = Field(
        description="measured; skipped: the pool left too few records (reason says how many); "
        "failed: scoring raised an engine error (reason), the proxy was still built.",
        examples=["measured"],
    )
    reason: str | None = Field(description="Why the report was skipped or failed.", examples=[None])
    spearman: float | None = Field(
        description="Spearman correlation of proxy and target scores (ties averaged); null when "
        "not measured or a score vector is constant.",
        examples=[0.62],
    )
    top_overlap: float | None = Field(
        description="Share of the target's top top_fraction also in the proxy's top top_fraction.",
        examples=[0.5],
    )
    top_fraction: float = Field(
        description="The top share top_overlap compares (0.1).", examples=[0.1]
    )
    top_k: int | None = Field(
        description="Records in that top share of the calibration slice.", examples=[6]
    )
    speedup: float | None = Field(
        description="Target seconds per sample over the proxy's (above 1: the proxy is faster).",
        examples=[0.95],
    )
    seconds: float | None = Field(description="Seconds the whole report took.", examples=[224.0])
    seed: int = Field(description="Seed of the calibration and target draws.", examples=[0])
    max_length: int = Field(
        description="Tokens per record at most (the proxy build's).", examples=[256]
    )
    batch_size: int = Field(
        description="Records per scoring pass (the proxy build's).", examples=[8]
    )
    layers: list[str] = Field(
        description="Layer-name suffixes whose gradients are scored.",
        examples=[["q_proj", "k_proj"]],
    )
    skipped_records: int = Field(
        description="Records drawn but left out: no response token.", examples=[0]
    )
    calibration: FidelityCalibration = Field(
        description="The calibration slice.",
        examples=[
            {
                "records": 64,
                "requested": 64,
                "tokens": 6144,
                "eligible_pool_records": 1200,
                "record_ids": ["dolly-17"],
            }
        ],
    )
    targets: FidelityTargets = Field(
        description="The target set.",
        examples=[
            {
                "source": "job",
                "records": 32,
                "requested": 32,
                "available": 200,
                "tokens": 3072,
                "record_ids": ["dev-0"],
            }
        ],
    )
    target: FidelityCost | None = Field(
        description="The full target's cost (null unless measured).",
        examples=[
            {
                "seconds_per_sample": 0.83,
                "calibration_s": 53.1,
                "target_set_s": 55.6,
                "scored_params": 106168320,
            }
        ],
    )
    proxy: FidelityCost | None = Field(
        description="The proxy's cost (null unless measured).",
        examples=[
            {
                "seconds_per_sample": 0.83,
                "calibration_s": 53.1,
                "target_set_s": 55.6,
                "scored_params": 106168320,
            }
        ],
    )


class ProxyRead(BaseModel):
    """A built proxy: its identity, size and fidelity report (in ``manifest``)."""

    id: str = Field(
        description="Pass as proxy.proxy_id to reuse it.",
        examples=["0b1e5c7e-3f0e-4a51-9d7c-2f4c1b8a9e10"],
    )
    job_id: str | None = Field(
        description="The job that built it.", examples=["6c1f6a8e-9a8b-4f57-8f0e-2b1d3c4e5f60"]
    )
    target_model: str = Field(
        description="The model it was derived from, as the API resolved it.",
        examples=["smollm2-135m-instruct"],
    )
    method: str = Field(description="Compression method.", examples=["ipsvd"])
    sparsity: float = Field(description="Fraction of parameters removed.", examples=[0.5])
    sha256: str = Field(description="Hash of the proxy's factors file.", examples=["9f2c" * 16])
    manifest: dict[str, Any] = Field(
        description="Everything recorded at build: per-layer ranks and parameter counts, "
        "totals, probe and alignment settings and losses, seed, library versions.",
        examples=[{"method": "ipsvd", "proxy_params": 67000000, "target_params": 134000000}],
    )
    fidelity: FidelityRead | None = Field(
        None,
        description="The fidelity report of the build (manifest.fidelity); null for proxies "
        "built before it existed or with fidelity_samples 0.",
        examples=[None],
    )
    created_at: datetime = Field(
        description="When it was built.", examples=["2026-12-01T12:00:00Z"]
    )


class ProxyPage(Page[ProxyRead]):
    """The tenant's proxies, newest first."""

    items: list[ProxyRead] = Field(
        description="This page's proxies.",
        examples=[[{"id": "0b1e5c7e-3f0e-4a51-9d7c-2f4c1b8a9e10", "method": "ipsvd"}]],
    )
