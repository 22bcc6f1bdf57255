"""What a finished select job measured, kept for cost estimates (service/estimates), and its
estimate set against the actual seconds.

Stage seconds come from the job's stage events (each stage lasts until the next one starts;
ranking until now). Tokens are counted with the model's tokenizer over the first
``SAMPLE_RECORDS`` records of the pool (untruncated, chat template applied) and scaled to the
pool: ``tokens_per_byte`` is that over the pool's bytes, as the API measures them.
"""

from __future__ import annotations

from datetime import datetime
from itertools import islice
from pathlib import Path
from statistics import fmean
from typing import Any

from service.db import session_scope
from service.estimates import repository as est_repo
from service.jobs import repository as repo
from service.models import Calibration
from service.models.base import utcnow

SAMPLE_RECORDS = 256
_NO_LIMIT = 1 << 30


def stage_seconds(job_id: str, ended: datetime) -> dict[str, float]:
    """Seconds per stage from the job's stage events; the last one runs until ``ended``."""
    with session_scope() as s:
        events = [
            e for e in repo.list_events(s, job_id, after=0, limit=10_000) if e.type == "stage"
        ]
        marks = [(e.message, e.created_at) for e in events]
    out: dict[str, float] = {}
    for (name, start), nxt in zip(marks, [*marks[1:], ("", ended)], strict=True):
        out[name] = out.get(name, 0.0) + max(0.0, (nxt[1] - start).total_seconds())
    return out


def pool_bytes(pool: Path) -> int:
    if pool.is_dir():
        return sum(p.stat().st_size for p in pool.rglob("*") if p.is_file())
    return pool.stat().st_size


def count_tokens(tokenizer: Any, pool: Path, samples: int) -> int:
    """Pool tokens: the mean over a sample of records, times the records."""
    from worker.engine.data import encode, iter_records
    from worker.engine.errors import NoResponseTokensError

    counts = []
    for rec in islice(iter_records(pool), SAMPLE_RECORDS):
        try:
            counts.append(len(encode(rec, tokenizer, _NO_LIMIT).input_ids))
        except NoResponseTokensError:
            continue
    return int(fmean(counts) * samples) if counts else 0


def record(
    job_id: str,
    request: dict[str, Any],
    pool: Path,
    samples: int,
    tokenizer: Any,
    runtime: dict[str, str],
    ranking_s: float,
) -> dict[str, Any]:
    """Store the job's calibration; return its estimate vs the actual seconds per stage."""
    seconds = stage_seconds(job_id, utcnow())
    seconds["ranking"] = ranking_s
    size = pool_bytes(pool)
    tokens = count_tokens(tokenizer, pool, samples)
    warm = request.get("warmup")
    passes = int(warm["checkpoints"]) if warm else 1
    scoring = seconds.get("scoring", 0.0)
    actual: dict[str, float | None] = {
        "loading": seconds.get("loading", 0.0),
        "warmup": seconds.get("warmup"),
        "proxy": (seconds.get("compressing", 0.0) + seconds.get("aligning", 0.0)) or None,
        "scoring": scoring,
        "ranking": ranking_s,
    }
    rates: dict[str, Any] = {
        "recipe": "warmup" if warm else "plain",
        "loading_s": seconds.get("loading", 0.0),
        "ranking_s_per_sample": ranking_s / samples if samples else None,
    }
    if tokens:
        rates["scoring_s_per_token"] = scoring / (tokens * passes)
        warm_s = actual["warmup"]
        if warm and warm_s:
            trained = tokens * float(warm["fraction"]) * float(warm.get("epochs") or 1.0)
            rates["warmup_s_per_token"] = warm_s / trained
    if actual["proxy"] is not None:
        rates["proxy_s"] = actual["proxy"]
    if size and tokens:
        with session_scope() as s:
            est_repo.add(
                s,
                Calibration(
                    job_id=job_id,
                    model=request["resolved"]["target_model"],
                    device=runtime.get("device", "?")[:64],
                    dtype=runtime.get("dtype", "?")[:16],
                    samples=samples,
                    pool_bytes=size,
                    tokens_per_byte=tokens / size,
                    rates=rates,
                ),
            )
    predicted = (request.get("estimate") or {}).get("stages", {})
    stages = {
        name: {
            "estimated_s": predicted.get(name, {}).get("seconds"),
            "actual_s": round(value, 3),
        }
        for name, value in actual.items()
        if value is not None
    }
    estimated_total = (request.get("estimate") or {}).get("total_seconds")
    return {
        "stages": stages,
        "total": {
            "estimated_s": estimated_total,
            "actual_s": round(sum(v for v in actual.values() if v is not None), 3),
        },
        "tokens": {"estimated": (request.get("estimate") or {}).get("tokens"), "counted": tokens},
    }
