"""Request and response bodies of /jobs (Pydantic; the ORM classes live in service.models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from service.models import JobKind, JobStage, JobStatus
from service.pagination import Page
from service.text import StoredText, unstorable
from service.webhooks.schemas import NotifySpec

_STRICT = ConfigDict(extra="forbid")

PROJECTED_ONLY = frozenset({"influence"})
"""Scorers that need projected features (their scores use the pool's curvature ``G^T G``)."""


class ProxySpec(BaseModel):
    """Build a proxy with these settings, or reuse one by ``proxy_id``. Unset fields take the
    engine's defaults (recorded in the proxy's manifest)."""

    model_config = _STRICT

    proxy_id: StoredText | None = Field(
        None,
        description="Reuse this built proxy (an id from GET /proxies, built from the same "
        "target_model) instead of building one; no other field may then be given.",
        examples=["0b1e5c7e-3f0e-4a51-9d7c-2f4c1b8a9e10"],
    )
    method: Literal["ipsvd", "svd", "random"] | None = Field(
        None,
        description="How each linear layer is compressed: ipsvd (weighted by probe "
        "covariances), svd or random (baselines). Default ipsvd.",
        examples=["ipsvd"],
    )
    sparsity: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Fraction of each compressed layer's parameters removed (0 keeps every "
        "layer dense).",
        examples=[0.5],
    )
    probe_samples: int | None = Field(
        None, gt=0, description="Pool records that measure IPSVD's covariances.", examples=[16]
    )
    align_steps: int | None = Field(
        None,
        ge=0,
        description="Alignment optimiser steps (0: no alignment, and no distillation phase).",
        examples=[10],
    )
    distill_steps: int | None = Field(
        None,
        ge=0,
        description="Distillation steps before alignment: the KL term alone, first order "
        "(about a training step of the proxy each); 0: none.",
        examples=[200],
    )
    distill_lr: float | None = Field(
        None, gt=0, description="Peak learning rate of the distillation phase.", examples=[1e-4]
    )
    hidden_weight: float | None = Field(
        None,
        ge=0,
        description="Weight of hidden-state matching (every decoder layer's output against "
        "the target's) beside the KL term in the distillation phase; 0: KL alone.",
        examples=[1.0],
    )
    ga_unit: Literal["batch", "sample"] | None = Field(
        None,
        description="Whose gradients the alignment cosines compare: batch (the batch-mean "
        "gradients, the paper's) or sample (each record's own, averaged over the batch; one "
        "pass per record). Default batch.",
        examples=["batch"],
    )
    delta_weight: float | None = Field(
        None,
        ge=0,
        description="Weight of output-gradient matching in the alignment loss: every "
        "compressed layer's per-token output gradients against the target's, per record "
        "(0: off, the default).",
        examples=[1.0],
    )
    kl_weight: float | None = Field(
        None, ge=0, description="Weight of the KL term in the alignment loss.", examples=[1.0]
    )
    temperature: float | None = Field(
        None, gt=0, description="Softmax temperature of the KL term.", examples=[1.0]
    )
    lr: float | None = Field(None, gt=0, description="Alignment learning rate.", examples=[1e-4])
    ridge: float | None = Field(
        None,
        gt=0,
        description="Covariance ridge, relative to each covariance's mean eigenvalue.",
        examples=[0.1],
    )
    max_length: int | None = Field(
        None, ge=2, description="Token budget per probe and alignment sequence.", examples=[128]
    )
    seed: int | None = Field(
        None, ge=0, description="Seed of the probe and alignment slices.", examples=[0]
    )
    recipe: Literal["iprox", "official"] | None = Field(
        None,
        description=(
            "Defaults to build with: `official` reproduces the IProX authors' recipe (rank "
            "rounded up to a multiple of 128, absolute ridge, all-token probes, per-factor "
            "L_GA, no KL, 5 epochs of AdamW at 1e-4); `iprox` (default) is this service's, "
            "chosen by measurement. Fields given here override the recipe's values."
        ),
        examples=["iprox"],
    )
    rank_allocation: Literal["uniform", "global"] | None = Field(
        None,
        description=(
            "`uniform`: each layer its parameter-matched rank; `global`: the same parameter "
            "budget spread across layers where their whitened spectra say it removes the most "
            "error (ipsvd and svd)."
        ),
        examples=["uniform"],
    )
    balance: bool | None = Field(
        None,
        description=(
            "Balance each rank component's norm between the factors A and B (function "
            "unchanged; factor gradients no longer dominated by one factor)."
        ),
        examples=[True],
    )
    checkpointing: bool | None = Field(
        None,
        description="Recompute decoder layers' activations in backward (less memory).",
        examples=[False],
    )
    factor_dtype: Literal["float64", "float32"] | None = Field(
        None,
        description="Precision of the IPSVD factorisation (float32 for slow-float64 GPUs).",
        examples=["float64"],
    )
    fidelity_samples: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="Pool records the fidelity report scores with both the proxy and the target "
        "(a seeded slice disjoint from probes and alignment; default 64; 0: no report).",
        examples=[64],
    )
    fidelity_targets: int | None = Field(
        None,
        gt=0,
        le=100_000,
        description="Target records the fidelity report scores against at most (a seeded sample "
        "of target_uri's records; without target_uri, pool records; default 32).",
        examples=[32],
    )

    @field_validator("fidelity_samples")
    @classmethod
    def _a_pair_to_rank(cls, value: int | None) -> int | None:
        if value == 1:
            raise ValueError("0 (no fidelity report) or at least 2 (a rank correlation needs two)")
        return value

    @model_validator(mode="after")
    def _reuse_excludes_settings(self) -> ProxySpec:
        if self.proxy_id is not None:
            given = [k for k, v in self.settings().items() if v is not None]
            if given:
                raise ValueError(f"proxy_id reuses a built proxy; drop {', '.join(given)}")
        return self

    def settings(self) -> dict[str, Any]:
        """The build settings that were given (for the engine's ProxyConfig)."""
        return self.model_dump(exclude={"proxy_id"}, exclude_none=True)


class ScorerSpec(BaseModel):
    """How pool samples are scored against the target tasks."""

    model_config = _STRICT

    method: Literal["tracin", "influence"] = Field(
        "tracin",
        description="tracin: gradient cosine with the target tasks; influence: inverse-"
        "curvature weighted (projected features only).",
        examples=["tracin"],
    )
    features: Literal["exact", "projected"] | None = Field(
        None,
        description="exact: unprojected per-sample gradient inner products (seed-free; tracin "
        "only); projected: seeded random-projected features (needed by influence). Default: "
        "exact for tracin, projected for influence.",
        examples=["exact"],
    )
    # At least one feature per layer suffix of the engine's default layers (7).
    proj_dim: int | None = Field(
        None,
        ge=7,
        description="Projection dimension (projected features only; at least one feature per "
        "scored layer type).",
        examples=[8192],
    )
    projection: Literal["gaussian", "eigen"] | None = Field(
        None,
        description="Projected features only: eigen (the default: each layer's top covariance "
        "eigenvectors on a seeded pool slice of projection_samples records) or gaussian "
        "(seeded random factors).",
        examples=["eigen"],
    )
    projection_samples: int | None = Field(
        None,
        gt=0,
        description="Pool records that define an eigen projection or an energy allocation.",
        examples=[64],
    )
    projection_allocation: Literal["uniform", "energy"] | None = Field(
        None,
        description="Projected features only: energy (the default: each layer's share of "
        "proj_dim by its gradient energy on projection_samples probe records) or uniform (the "
        "same grid for every layer).",
        examples=["energy"],
    )
    batch_size: int | None = Field(
        None, gt=0, description="Samples per forward/backward batch.", examples=[8]
    )
    max_length: int | None = Field(
        None, ge=2, description="Token budget per scored sequence.", examples=[128]
    )
    damping: float | None = Field(
        None, gt=0, description="Influence damping (influence only).", examples=[0.001]
    )
    seed: int | None = Field(
        None, ge=0, description="Projection seed (projected features only).", examples=[0]
    )
    adam: bool = Field(
        False,
        description="Precondition the pool's gradients with each warm-up checkpoint's Adam "
        "moments, as LESS does (needs warmup).",
        examples=[True],
    )

    @field_validator("features")
    @classmethod
    def _features_of_the_scorer(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The engine's scorer registry holds the same rule; tests/service check they agree.
        method = info.data.get("method")
        if value is not None and method in PROJECTED_ONLY and value != "projected":
            raise ValueError(f"the {method} scorer scores from projected features only")
        return value


class WarmupSpec(BaseModel):
    """The paper's (and LESS's) recipe: fine-tune the target briefly on a seeded slice of the
    pool, keep ``checkpoints`` checkpoints, build a proxy from each and sum their scores weighted
    by the learning rate of the steps each ends. Unset training settings take the engine's
    defaults (FinetuneConfig)."""

    model_config = _STRICT

    fraction: float = Field(
        0.05, gt=0, le=1, description="Share of the pool the warm-up trains on.", examples=[0.05]
    )
    checkpoints: int = Field(
        4, ge=1, le=32, description="Checkpoints kept, evenly spaced over the run.", examples=[4]
    )
    epochs: float | None = Field(
        None, gt=0, le=100, description="Passes over the slice (default 1).", examples=[4]
    )
    lora_rank: int | None = Field(
        None,
        ge=0,
        le=4096,
        description="LoRA rank of the warm-up; 0 fine-tunes every weight (default 0).",
        examples=[128],
    )
    lr: float | None = Field(None, gt=0, description="Peak learning rate.", examples=[2e-5])
    batch_size: int | None = Field(None, gt=0, description="Records per step.", examples=[4])
    max_length: int | None = Field(None, gt=0, description="Tokens per record.", examples=[512])
    seed: int | None = Field(
        None, ge=0, description="Seeds the slice, the data order and LoRA.", examples=[0]
    )


class SelectionSpec(BaseModel):
    """Exactly one budget: ``top_k`` records, a ``fraction`` of the pool, or a ``token_budget``."""

    model_config = _STRICT

    # A pool's size is counted in 32-bit columns: a larger top_k can never be met.
    top_k: int | None = Field(
        None,
        gt=0,
        le=2**31 - 1,
        description="Select this many records (at most the pool's size).",
        examples=[8],
    )
    fraction: float | None = Field(
        None, gt=0, le=1, description="Select this share of the pool.", examples=[0.05]
    )
    token_budget: int | None = Field(
        None, gt=0, description="Select best-first until this many tokens.", examples=[200000]
    )
    quota_field: StoredText | None = Field(
        None,
        min_length=1,
        description="A record field to balance on (with quota).",
        examples=["category"],
    )
    quota: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Largest share of the selection one value of quota_field may take.",
        examples=[0.3],
    )

    @model_validator(mode="after")
    def _one_budget(self) -> SelectionSpec:
        given = [k for k in ("top_k", "fraction", "token_budget") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of top_k, fraction, token_budget"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if (self.quota_field is None) != (self.quota is None):
            raise ValueError("quota_field and quota go together")
        return self


class JobCreate(BaseModel):
    """A job to run: select (build or reuse a proxy, score the pool, rank) or proxy_build."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "select",
                    "target_model": "smollm2-135m-instruct",
                    "dataset_uri": "file:///data/pool.jsonl",
                    "target_uri": "file:///data/target.jsonl",
                    "proxy": {"method": "ipsvd", "sparsity": 0.5, "align_steps": 2},
                    "scorer": {"method": "tracin"},
                    "selection": {"top_k": 8},
                    "metadata": {"experiment": "readme"},
                }
            ]
        },
    )

    kind: JobKind = Field(
        description="select: score and rank; proxy_build: only build a proxy.",
        examples=["select"],
    )
    dataset_uri: StoredText = Field(
        min_length=1,
        description="The pool to select from (select) or the probe and alignment data "
        "(proxy_build): file:// under the data roots, http(s)://, s3:// or gs://.",
        examples=["file:///data/pool.jsonl"],
    )
    target_model: StoredText = Field(
        min_length=1,
        description="Preset name, a local model folder under the model roots, or a Hugging Face "
        "hub id org/name[@revision] allowed by IPROX_ALLOWED_MODELS.",
        examples=["smollm2-135m-instruct"],
    )
    target_uri: str | list[str] | None = Field(
        None,
        description="The target task set, or a list of them (select; a sample's score is the "
        "max over tasks).",
        examples=["file:///data/target.jsonl"],
    )
    proxy: ProxySpec = Field(
        default_factory=lambda: ProxySpec(),
        description="Build settings of the proxy, or the id of one to reuse.",
        examples=[{"method": "ipsvd", "sparsity": 0.5}],
    )
    scorer: ScorerSpec = Field(
        default_factory=lambda: ScorerSpec(),
        description="How samples are scored.",
        examples=[{"method": "tracin"}],
    )
    selection: SelectionSpec | None = Field(
        None, description="The budget (select only).", examples=[{"top_k": 8}]
    )
    metadata: dict[StoredText, StoredText] = Field(
        default_factory=dict,
        description="Free labels (at most 50), filterable with GET /jobs?metadata.<key>=<value>.",
        examples=[{"experiment": "readme"}],
    )
    warmup: WarmupSpec | None = Field(
        None,
        description="Select jobs: warm up and score with a proxy per checkpoint (see WarmupSpec).",
        examples=[{"fraction": 0.05, "checkpoints": 4, "epochs": 4, "lora_rank": 128}],
    )
    dry_run: bool = Field(
        False,
        description="Only estimate: answer 200 with the predicted samples, tokens and seconds "
        "per stage (from rates measured on this deployment), storing and queueing nothing.",
        examples=[True],
    )
    notify: NotifySpec | None = Field(
        None,
        description="A webhook announcing the job's end (Standard Webhooks, signed with the "
        "tenant's secret from GET /webhooks/secret).",
        examples=[{"url": "https://hooks.example.com/iprox", "events": ["succeeded", "failed"]}],
    )

    @field_validator("target_uri")
    @classmethod
    def _storable_targets(cls, value: str | list[str] | None) -> str | list[str] | None:
        # Checked here rather than by StoredText: inside the union, pydantic would name the
        # field after its union branches.
        for k, uri in enumerate([value] if isinstance(value, str) else value or []):
            reason = unstorable(uri)
            if reason:
                where = "" if isinstance(value, str) else f"item {k} "
                raise ValueError(f"{where}{reason}")
        return value

    @field_validator("metadata")
    @classmethod
    def _label_sizes(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 50 or any(len(k) > 100 or len(v) > 500 for k, v in value.items()):
            raise ValueError("at most 50 labels, keys up to 100 and values up to 500 characters")
        return value

    def target_uris(self) -> list[str]:
        if self.target_uri is None:
            return []
        return [self.target_uri] if isinstance(self.target_uri, str) else list(self.target_uri)


STAGE_UNITS: dict[str, str] = {
    "loading": "steps",
    "compressing": "steps",
    "aligning": "steps",
    "scoring": "samples",
    "ranking": "samples",
}
"""The unit each stage's progress counts in (the worker's engine reports in the same)."""


class Progress(BaseModel):
    """Progress of the current stage, in one unit per stage."""

    done: int = Field(description="Units of the current stage done.", examples=[13])
    total: int = Field(description="Units the current stage has in all.", examples=[42])
    unit: str | None = Field(
        None,
        description="What the stage counts: steps (loading, compressing, aligning) or samples "
        "(scoring, ranking); null before the first stage.",
        examples=["samples"],
    )


class ErrorInfo(BaseModel):
    """Why a job failed."""

    code: str = Field(description="Stable machine-readable code.", examples=["out_of_memory"])
    message: str = Field(
        description="What happened, for people.", examples=["one sample does not fit"]
    )


_TIME = "2026-12-01T12:00:00Z"


class JobRead(BaseModel):
    """A job as the API sees it."""

    id: str = Field(description="The job's id.", examples=["6c1f6a8e-9a8b-4f57-8f0e-2b1d3c4e5f60"])
    kind: JobKind = Field(description="What the job does.", examples=["select"])
    status: JobStatus = Field(description="Where the job is in its life.", examples=["running"])
    stage: JobStage | None = Field(
        description="The stage running now (null before the first).", examples=["scoring"]
    )
    progress: Progress = Field(
        description="Progress of the current stage.",
        examples=[{"done": 13, "total": 42, "unit": "samples"}],
    )
    partial: bool = Field(
        description="True when the job stopped (cancelled) with only some scores.",
        examples=[False],
    )
    created_at: datetime = Field(description="When the job was submitted.", examples=[_TIME])
    started_at: datetime | None = Field(description="When a worker started it.", examples=[_TIME])
    finished_at: datetime | None = Field(
        description="When it reached a terminal status.", examples=[None]
    )
    updated_at: datetime = Field(description="Last change or worker heartbeat.", examples=[_TIME])
    error: ErrorInfo | None = Field(
        description="Why the job failed (null otherwise).", examples=[None]
    )
    result: dict[str, Any] | None = Field(
        description="What a finished job produced: pool size, selected count, seconds per "
        "stage, the proxy's id and size, ...",
        examples=[{"pool_size": 36, "selected": 8, "proxy_id": "0b1e5c7e"}],
    )
    proxy_id: str | None = Field(
        description="The proxy the job built or reused.", examples=["0b1e5c7e"]
    )
    metadata: dict[str, str] = Field(
        description="The labels given at submission.", examples=[{"experiment": "readme"}]
    )
    request: dict[str, Any] = Field(
        description="The request as submitted, plus what the API resolved (the model).",
        examples=[{"kind": "select", "selection": {"top_k": 8}}],
    )
    links: dict[str, str] = Field(
        description="URLs of the job's resources.",
        examples=[{"self": "/jobs/6c1f", "events": "/jobs/6c1f/events"}],
    )


class JobPage(Page[JobRead]):
    """Jobs, newest first."""

    items: list[JobRead] = Field(
        description="This page's jobs.",
        examples=[[{"id": "6c1f6a8e-9a8b-4f57-8f0e-2b1d3c4e5f60", "status": "running"}]],
    )


class EventRead(BaseModel):
    """One line of a job's history."""

    id: int = Field(description="Increasing id within the service.", examples=[42])
    created_at: datetime = Field(description="When it happened.", examples=[_TIME])
    type: str = Field(
        description="status (a status change), stage (a stage began), progress (a progress "
        "tick with rate, ETA and the stage's metrics) or metric (an engine event).",
        examples=["progress"],
    )
    stage: str | None = Field(description="The stage it happened in.", examples=["aligning"])
    message: str = Field(description="A short summary.", examples=["aligning 3/10 steps"])
    data: dict[str, Any] | None = Field(
        description="Details: for progress, done, total, unit, rate_per_s, eta_s and the "
        "stage's metrics (alignment: step, L_GA, KL).",
        examples=[{"done": 3, "total": 10, "unit": "steps", "eta_s": 21.0, "L_GA": 0.41}],
    )


class EventPage(Page[EventRead]):
    """A job's events, oldest first."""

    items: list[EventRead] = Field(
        description="This page's events.",
        examples=[[{"id": 41, "type": "stage", "stage": "aligning", "message": "aligning"}]],
    )


class ScoreRead(BaseModel):
    """One pool sample's score."""

    index: int = Field(description="The sample's position in the pool.", examples=[3])
    id: str = Field(description="The record's id field (or its index).", examples=["math-3"])
    score: float = Field(description="Its influence score (higher is better).", examples=[0.27])
    rank: int | None = Field(
        None,
        description="Position in the ranking (1 is the best score; ties by pool index); "
        "given with order=rank.",
        examples=[1],
    )


class ScorePage(Page[ScoreRead]):
    """A job's scores by pool index."""

    items: list[ScoreRead] = Field(
        description="This page's scores.", examples=[[{"index": 3, "id": "math-3", "score": 0.27}]]
    )

    partial: bool = Field(
        description="True while scoring runs, or when the job was cancelled.", examples=[False]
    )
    count: int = Field(description="Scores stored for the job.", examples=[36])
