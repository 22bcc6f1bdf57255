"""Predicting a job's cost: pool size and tokens, and seconds per stage.

Rates come from the latest calibrations of the job's model (one row per finished select job,
written by the worker: worker/tasks/calibrate.py), averaged; with none, from :data:`BUILTIN`,
rough figures for a ~135M model on a small CPU (docs/benchmarks.md). Tokens are the pool's
bytes times the tokens per byte the worker counted (the model's tokenizer over a sample of a
finished job's pool); the error bar is their spread, at least 25%.

Stages and what they scale:

- loading: the calibration's seconds (per job);
- warmup: pool tokens x fraction x epochs x seconds per warm-up token;
- proxy (not reused, no warm-up): the calibration's build seconds;
- scoring: pool tokens x seconds per token x passes (one per warm-up checkpoint; with a warm-up,
  the per-checkpoint proxy builds run inside scoring and are in its rate when the calibration
  came from a warm-up job, else added as proxy seconds per checkpoint);
- ranking: samples x seconds per sample.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from service.config import Settings
from service.datasets import resolve_file_uri
from service.estimates import repository as repo
from service.estimates.schemas import Estimate, StageEstimate
from service.jobs.schemas import JobCreate
from service.models import Calibration

BUILTIN: dict[str, Any] = {
    "source": "built-in (SmolLM2-135M-Instruct, float32, 2 CPU cores; docs/benchmarks.md)",
    "device": "cpu",
    "dtype": "float32",
    "tokens_per_byte": 0.2,
    "rates": {
        "loading_s": 10.0,
        "proxy_s": 90.0,
        "scoring_s_per_token": 0.014,
        "ranking_s_per_sample": 0.002,
        "warmup_s_per_token": 0.02,
        "recipe": "plain",
    },
}
MIN_ERROR = 0.25


def pool_bytes(uri: str, settings: Settings) -> int | None:
    """The size of a pool's data: a local file or folder, or an object-store file (its
    metadata); None for http(s) (the API does not download it to know)."""
    scheme = urlsplit(uri).scheme
    try:
        if scheme == "file":
            path = resolve_file_uri(uri, settings.data_roots, "dataset_uri")
            if path.is_dir():
                return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
            return path.stat().st_size
        if scheme in ("s3", "gs", "hf"):
            import fsspec

            fs, path_ = fsspec.core.url_to_fs(uri)
            size = fs.info(path_).get("size")
            return int(size) if size is not None else None
    except Exception:  # checked already by check_uri; a size we cannot read is only unknown
        return None
    return None


def _rate(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return fmean(values) if values else None


def estimate(
    session: Session, settings: Settings, body: JobCreate, model: str, samples: int | None
) -> Estimate:
    """The cost of ``body`` on this deployment (nothing stored, nothing queued)."""
    cals: list[Calibration] = repo.latest(session, model)
    if cals:
        rates = [c.rates for c in cals]
        tpbs = [c.tokens_per_byte for c in cals]
        tpb = fmean(tpbs)
        spread = (max(tpbs) - min(tpbs)) / (2 * tpb) if tpb > 0 else 1.0
        error = max(MIN_ERROR, spread)
        source: dict[str, Any] = {
            "source": "measured",
            "jobs": [c.job_id for c in cals],
            "device": cals[0].device,
            "dtype": cals[0].dtype,
        }
    else:
        rates, tpb, error = [BUILTIN["rates"]], float(BUILTIN["tokens_per_byte"]), 0.5
        source = {k: BUILTIN[k] for k in ("source", "device", "dtype")}
    size = pool_bytes(body.dataset_uri, settings)
    tokens = int(size * tpb) if size is not None else None
    warm = body.warmup
    warm_cals = [r for r in rates if r.get("recipe") == "warmup"]
    plain_cals = [r for r in rates if r.get("recipe") != "warmup"]
    stages: dict[str, StageEstimate] = {}

    def add(name: str, seconds: float | None, basis: str) -> None:
        if seconds is not None and math.isfinite(seconds):
            stages[name] = StageEstimate(seconds=round(seconds, 3), basis=basis)

    loading = _rate(rates, "loading_s")
    add("loading", loading, f"{loading or 0:.3g} s per job")
    passes = warm.checkpoints if warm is not None else 1
    if warm is not None and tokens is not None:
        per = _rate(rates, "warmup_s_per_token") or BUILTIN["rates"]["warmup_s_per_token"]
        epochs = warm.epochs or 1.0
        trained = tokens * warm.fraction * epochs
        add("warmup", trained * per, f"{trained:,.0f} tokens trained x {per:.3g} s/token")
    same = (warm_cals if warm is not None else plain_cals) or rates
    builds_inside = warm is not None and bool(warm_cals)
    if body.kind.value == "proxy_build" or (body.proxy.proxy_id is None and not builds_inside):
        build = _rate(plain_cals or rates, "proxy_s")
        if build is not None:
            add("proxy", build * passes, f"{build:.3g} s per build x {passes}")
    if body.kind.value == "select" and tokens is not None:
        per = _rate(same, "scoring_s_per_token")
        if per is not None:
            add(
                "scoring",
                tokens * per * passes,
                f"{tokens:,} tokens x {per:.3g} s/token x {passes} pass(es)",
            )
    if body.kind.value == "select" and samples is not None:
        per = _rate(same, "ranking_s_per_sample")
        if per is not None:
            add("ranking", samples * per, f"{samples:,} samples x {per:.3g} s/sample")
    return Estimate(
        samples=samples,
        pool_bytes=size,
        tokens=tokens,
        tokens_error=round(error, 3),
        stages=stages,
        total_seconds=round(sum(s.seconds for s in stages.values()), 3),
        calibration=source,
    )
