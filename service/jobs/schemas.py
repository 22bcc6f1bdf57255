"""Request and response bodies of /jobs (Pydantic; the ORM classes live in service.models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from service.models import JobKind, JobStage, JobStatus
from service.pagination import Page
from service.text import StoredText, unstorable

_STRICT = ConfigDict(extra="forbid")

PROJECTED_ONLY = frozenset({"influence"})
"""Scorers that need projected features (their scores use the pool's curvature ``G^T G``)."""


class ProxySpec(BaseModel):
    """Build a proxy with these settings, or reuse one by ``proxy_id``. Unset fields take the
    engine's defaults (recorded in the proxy's manifest)."""

    model_config = _STRICT

    proxy_id: StoredText | None = Field(
        None, description="Reuse this built proxy instead of building."
    )
    method: Literal["ipsvd", "svd", "random"] | None = Field(None, description="Compression.")
    sparsity: float | None = Field(None, gt=0, lt=1, description="Fraction of parameters removed.")
    probe_samples: int | None = Field(None, gt=0, description="Probe sequences for IPSVD.")
    align_steps: int | None = Field(None, ge=0, description="Alignment steps (0 = none).")
    kl_weight: float | None = Field(None, ge=0, description="lambda_KL of the alignment loss.")
    temperature: float | None = Field(None, gt=0, description="KL temperature.")
    lr: float | None = Field(None, gt=0, description="Alignment learning rate.")
    ridge: float | None = Field(None, gt=0, description="Covariance ridge (relative).")
    max_length: int | None = Field(None, gt=0, description="Token budget per sequence.")
    seed: int | None = Field(None, ge=0)
    checkpointing: bool | None = Field(
        None, description="Recompute decoder layers' activations in backward (less memory)."
    )
    factor_dtype: Literal["float64", "float32"] | None = Field(
        None, description="Precision of the IPSVD factorisation (float32 for slow-float64 GPUs)."
    )

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
    model_config = _STRICT

    method: Literal["tracin", "influence"] = Field("tracin", description="Score function.")
    features: Literal["exact", "projected"] | None = Field(
        None,
        description="exact: unprojected per-sample gradient inner products (seed-free; tracin "
        "only); projected: seeded random-projected features (needed by influence). Default: "
        "exact for tracin, projected for influence.",
    )
    proj_dim: int | None = Field(
        None, gt=0, description="Projection dimension (projected features only)."
    )
    projection: Literal["gaussian", "eigen"] | None = Field(
        None,
        description="Projected features only: gaussian (seeded random) or eigen (each layer's "
        "top covariance eigenvectors on a seeded pool slice).",
    )
    projection_samples: int | None = Field(
        None, gt=0, description="Pool records that define an eigen projection."
    )
    batch_size: int | None = Field(None, gt=0)
    max_length: int | None = Field(None, gt=0)
    damping: float | None = Field(None, gt=0, description="Influence damping.")
    seed: int | None = Field(None, ge=0, description="Projection seed (projected features only).")

    @field_validator("features")
    @classmethod
    def _features_of_the_scorer(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The engine's scorer registry holds the same rule; tests/service check they agree.
        method = info.data.get("method")
        if value is not None and method in PROJECTED_ONLY and value != "projected":
            raise ValueError(f"the {method} scorer scores from projected features only")
        return value


class SelectionSpec(BaseModel):
    """Exactly one budget: ``top_k`` records, a ``fraction`` of the pool, or a ``token_budget``."""

    model_config = _STRICT

    # A pool's size is counted in 32-bit columns: a larger top_k can never be met.
    top_k: int | None = Field(None, gt=0, le=2**31 - 1)
    fraction: float | None = Field(None, gt=0, le=1)
    token_budget: int | None = Field(None, gt=0)
    quota_field: StoredText | None = Field(None, min_length=1, description="Field to balance on.")
    quota: float | None = Field(None, gt=0, le=1, description="Largest share of one value.")

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
    model_config = _STRICT

    kind: JobKind = Field(description="select: score and rank; proxy_build: only build a proxy.")
    dataset_uri: StoredText = Field(min_length=1, description="The pool (select) or probe data.")
    target_model: StoredText = Field(
        min_length=1,
        description="Preset name, a local model folder under the model roots, or a Hugging Face "
        "hub id org/name[@revision] allowed by IPROX_ALLOWED_MODELS.",
    )
    target_uri: str | list[str] | None = Field(None, description="Target-task set(s) (select).")
    proxy: ProxySpec = Field(default_factory=lambda: ProxySpec())
    scorer: ScorerSpec = Field(default_factory=lambda: ScorerSpec())
    selection: SelectionSpec | None = Field(None, description="The budget (select).")
    metadata: dict[StoredText, StoredText] = Field(default_factory=dict, description="Free labels.")

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


class Progress(BaseModel):
    done: int
    total: int


class ErrorInfo(BaseModel):
    code: str
    message: str


class JobRead(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    stage: JobStage | None
    progress: Progress
    partial: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    error: ErrorInfo | None
    result: dict[str, Any] | None
    proxy_id: str | None
    metadata: dict[str, str]
    request: dict[str, Any]
    links: dict[str, str]


class JobPage(Page[JobRead]):
    """Jobs, newest first."""


class EventRead(BaseModel):
    id: int
    created_at: datetime
    type: str
    stage: str | None
    message: str
    data: dict[str, Any] | None


class EventPage(Page[EventRead]):
    """A job's events, oldest first."""


class ScoreRead(BaseModel):
    index: int
    id: str
    score: float


class ScorePage(Page[ScoreRead]):
    """A job's scores by pool index."""

    partial: bool = Field(description="True while scoring runs, or when the job was cancelled.")
    count: int
