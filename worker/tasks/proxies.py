"""A job's proxy: built by the job and published under the artifact root, or a saved one made
available locally for scoring (under a URL root: downloaded into the worker's cache)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.artifacts import download_dir, is_url, sha256_file
from service.config import Settings
from service.db import session_scope
from service.jobs import state
from service.models import Proxy
from service.proxies import repository as proxy_repo
from worker.engine.errors import ArtifactError
from worker.tasks.configs import proxy_config
from worker.tasks.reporting import Reporter
from worker.tasks.runtime import model_cache, worker_runtime

PROXY_NAMESPACE = uuid.UUID("6f1d3c56-0c8e-4d8e-9a3e-2f4b8d1e7a10")


FIDELITY_FIGURES = ("status", "reason", "spearman", "top_overlap", "top_fraction", "speedup")


def fidelity_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The fidelity report's figures (no record ids) for a job's events and result; ``None``
    when the proxy has no report (built before it existed, or with fidelity_samples 0)."""
    report = manifest.get("fidelity")
    if not isinstance(report, dict):
        return None
    out = {k: report.get(k) for k in FIDELITY_FIGURES}
    calibration, targets = report.get("calibration") or {}, report.get("targets") or {}
    out["calibration_records"] = calibration.get("records")
    out["target_records"] = targets.get("records")
    out["target_source"] = targets.get("source")
    for side in ("target", "proxy"):
        out[f"{side}_seconds_per_sample"] = (report.get(side) or {}).get("seconds_per_sample")
    out["seconds"] = report.get("seconds")
    return out


def ensure_proxy(
    job: dict[str, Any],
    model: str,
    pool: Path,
    settings: Settings,
    targets: Sequence[Path] = (),
) -> Proxy:
    """The proxy this job built, building it now from ``pool`` if needed (its id derives from
    the job id, so a redelivered build writes to the same folder and row). Its fidelity report
    scores against the ``targets`` files (none: a slice of the pool)."""
    from worker.engine.pipeline import build_proxy_from_files

    job_id = job["id"]
    with session_scope() as s:
        existing = proxy_repo.find_by_job(s, job_id)
        if existing is not None:
            return existing
    proxy_id = str(uuid.uuid5(PROXY_NAMESPACE, job_id))
    parts = ("proxies", proxy_id)
    out_dir = settings.artifacts.workspace(*parts)
    config = proxy_config(job["request"].get("proxy") or {})
    reporter = Reporter(job_id, stages=True)
    build_proxy_from_files(
        model,
        pool,
        out_dir,
        config,
        progress=reporter.progress,
        should_stop=reporter.should_stop,
        runtime=worker_runtime(settings),
        models=model_cache(settings),
        targets=targets,
    )
    reporter.close()
    manifest_file = out_dir / "proxy.json"
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    location = settings.artifacts.publish(*parts)  # the row is written only once it is there
    with session_scope() as s:
        proxy = proxy_repo.add_proxy(
            s,
            Proxy(
                id=proxy_id,
                tenant_id=job["tenant_id"],
                job_id=job_id,
                target_model=model,
                method=config.method,
                sparsity=config.sparsity,
                path=location,
                sha256=sha256_file(manifest_file),
                manifest=manifest,
            ),
        )
        keys = ("target_params", "proxy_params", "param_ratio", "achieved_sparsity")
        sizes = {k: manifest[k] for k in keys if k in manifest}
        # Probe batches split because the device ran out of memory (0 when none was).
        halvings = (manifest.get("probe") or {}).get("oom_halvings", 0)
        sizes["probe_oom_halvings"] = halvings
        state.metric(s, job_id, "proxy built", {"proxy_id": proxy_id} | sizes)
        fidelity = fidelity_summary(manifest)
        if fidelity is not None:
            state.metric(s, job_id, "proxy fidelity", {"proxy_id": proxy_id} | fidelity)
    return proxy


def local_proxy(proxy_id: str, location: str, sha256: str, settings: Settings) -> Path:
    """A local folder holding the proxy: its own folder when it was saved as a path; for a URL,
    a copy in this worker's cache, downloaded once and checked against the recorded hash."""
    if not is_url(location):
        return Path(location)
    cached = settings.artifacts.workspace("cache", "proxies", proxy_id)
    if not cached.is_dir():
        try:
            download_dir(location, cached)
        except (ImportError, OSError, ValueError) as exc:
            raise ArtifactError(f"proxy {proxy_id}: cannot download {location} ({exc})") from None
    if sha256_file(cached / "proxy.json") != sha256:
        shutil.rmtree(cached, ignore_errors=True)
        raise ArtifactError(
            f"proxy {proxy_id}: the copy of {location} does not match the hash recorded at build"
        )
    return cached
