"""Deployment settings, read from ``IPROX_*`` environment variables by the API and the worker.

With nothing set, everything lives under ``IPROX_HOME`` (the embedded default): a SQLite
database, a filesystem message broker and the artifact folder. ``IPROX_ARTIFACT_ROOT`` may also
be an fsspec URL (service/artifacts.py). Production points
``IPROX_DATABASE_URL`` at Postgres and ``IPROX_BROKER_URL`` at Redis.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.artifacts import ArtifactRoot, is_url, require_backend
from service.outbound import OutboundPolicy

# The engine's presets, repeated here because the API may not import the engine; a test checks
# that the two lists agree.
DEFAULT_PRESETS = ("smollm2-135m-instruct", "gemma3-270m")


def _split_paths(value: Any) -> Any:
    """``IPROX_DATA_ROOTS=/a:/b`` (os.pathsep) or ``/a,/b``; a list passes through."""
    if isinstance(value, str):
        parts = value.replace(",", os.pathsep).split(os.pathsep)
        return [p.strip() for p in parts if p.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of a deployment; the README's "Configuration" section lists them."""

    model_config = SettingsConfigDict(env_prefix="IPROX_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".iprox",
        description="State folder of the embedded default (SQLite file, broker queue, artifacts).",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///$IPROX_HOME/iprox.db."
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL; default a filesystem queue under $IPROX_HOME/broker.",
    )
    artifact_root: str | None = Field(
        default=None,
        description="Folder, or fsspec URL (file://, s3://, gs://, ...), for proxies and subsets.",
    )
    work_dir: Path | None = Field(
        default=None,
        description="The worker's local folder when the artifact root is a URL; "
        "default $IPROX_HOME/work.",
    )
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders that file:// dataset URIs must lie under (':' or ',' separated).",
    )
    model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders that local target_model directories must lie under.",
    )
    presets: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PRESETS),
        description="Model preset names the API accepts as target_model.",
    )
    allowed_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Glob patterns of Hugging Face hub ids the API accepts as target_model "
        "(e.g. 'Qwen/*,meta-llama/Llama-3.2-*'); unset: only ids already in the hub cache.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="(worker) auto (CUDA when available, else the CPU), cpu, cuda or cuda:N.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="(worker) model dtype: auto is bfloat16 on CUDA and float32 on the CPU.",
    )
    model_cache_size: int = Field(
        default=1,
        ge=0,
        description="(worker) loaded target models a worker process keeps between tasks "
        "(the shards of a job); 0 loads the model for every task.",
    )
    api_key: str | None = Field(
        default=None, description="Local API key of the embedded default (created when unset)."
    )
    http_max_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Largest http(s) dataset accepted, bytes."
    )
    http_timeout_s: float = Field(
        default=30.0, gt=0, description="Connect/read timeout for http(s) datasets, seconds."
    )
    http_total_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="Wall-clock limit of a whole http(s) request (HEAD check or download), s; "
        "also bounds s3:// and gs:// downloads (checked between chunks).",
    )
    shard_size: int = Field(
        default=2048, gt=0, description="Pool samples per scoring shard (one Celery task each)."
    )
    task_soft_time_limit_s: int = Field(
        default=6 * 3600, gt=0, description="Soft time limit of one task; the job then fails."
    )
    task_time_limit_s: int = Field(
        default=6 * 3600 + 300, gt=0, description="Hard time limit: the worker kills the task."
    )
    queue: str = Field(default="iprox", description="Celery queue the worker consumes.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names or networks (CIDR) that outbound http(s) requests may reach "
        "although they are not public addresses (',' separated), e.g. 10.0.0.0/8,files.lan.",
    )
    webhook_max_attempts: int = Field(
        default=8,
        ge=1,
        description="Deliveries of one webhook event tried before it is given up (recorded in "
        "the job's events).",
    )
    webhook_backoff_s: float = Field(
        default=5.0,
        gt=0,
        description="Wait before a webhook's second attempt, s; doubled for each later one.",
    )
    webhook_max_backoff_s: float = Field(
        default=1800.0, gt=0, description="Longest wait between two webhook attempts, s."
    )
    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Time a webhook receiver has to answer one delivery (connect and read), s.",
    )
    shard_stale_after_s: int = Field(
        default=300,
        gt=0,
        description="A claimed shard (or planning/ranking step) with no heartbeat for this long, "
        "or an unclaimed one queued this long ago, is re-queued by the reconciler.",
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        description="Times a job step whose worker went silent is re-queued before the job "
        "fails (retries_exhausted).",
    )
    reconcile_interval_s: float = Field(
        default=30.0, gt=0, description="How often the reconciler looks for stranded work, s."
    )
    transient_retries: int = Field(
        default=8,
        ge=0,
        description="Retries (with backoff) of a task that hit a database or broker outage.",
    )
    db_pool_size: int = Field(default=10, gt=0, description="Database connections kept open.")
    db_max_overflow: int = Field(
        default=10, ge=0, description="Extra database connections allowed under load."
    )
    db_pool_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Wait for a free database connection before answering 503, s.",
    )
    db_connect_timeout_s: int = Field(
        default=3, gt=0, description="Timeout of a new database connection, s (Postgres)."
    )
    api_key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="Seconds an API process trusts a key it found valid without looking it up "
        "again: a key revoked elsewhere stops working within this time (0: look up every time).",
    )
    api_max_inflight: int = Field(
        default=32,
        gt=0,
        description="Requests the API works on at once; more are answered 503 at once.",
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="json: one JSON object a line (with job_id, tenant, stage, shard where they "
        "apply); text: plain lines for people.",
    )
    log_level: str = Field(default="INFO", description="Root log level of the API and workers.")
    readyz_worker_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="How long GET /readyz waits for workers to answer its ping.",
    )
    progress_event_interval_s: float = Field(
        default=5.0,
        ge=0,
        description="(worker) Seconds between progress events of one stage in a job's events "
        "(stage starts and ends are always written).",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="(worker) Serve the worker's Prometheus metrics on this port; unset, they "
        "reach the API's /metrics through PROMETHEUS_MULTIPROC_DIR when that is shared.",
    )

    @field_validator("data_roots", "model_roots", "presets", "allowed_models", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_paths(value)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("artifact_root", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("artifact_root")
    @classmethod
    def _reachable_protocol(cls, value: str | None) -> str | None:
        if value is not None and is_url(value):
            require_backend(value)
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'iprox.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def artifacts(self) -> ArtifactRoot:
        """The artifact root, and the local folder the worker makes artifacts in."""
        root = self.artifact_root or str(self.home / "artifacts")
        work = (self.work_dir or self.home / "work") if is_url(root) else Path(root)
        return ArtifactRoot(root, work)

    @property
    def outbound(self) -> OutboundPolicy:
        """The address check every outbound http(s) request goes through."""
        return OutboundPolicy(self.allowed_hosts)

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem broker keeps its messages (embedded default only)."""
        return self.home / "broker"

    @property
    def is_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
