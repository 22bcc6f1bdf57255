"""The worker process's device, dtype and loaded models.

The runtime is resolved from ``IPROX_DEVICE`` / ``IPROX_DTYPE`` once per process:
``worker/celery_app.py`` does it at start-up, so a worker asked for CUDA where there is none
exits with a message before taking a job. The model cache keeps the target a job's tasks load
(its proxy build and each of its shards) in this process, so the next shard does not load it
again; ``IPROX_MODEL_CACHE_SIZE`` bounds it (0 turns it off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.config import Settings

if TYPE_CHECKING:
    from worker.engine.device import Runtime
    from worker.engine.pipeline import ModelCache

_caches: dict[int, ModelCache] = {}


def worker_runtime(settings: Settings) -> Runtime:
    """``IPROX_DEVICE`` and ``IPROX_DTYPE`` resolved; ``ConfigError`` naming them otherwise."""
    from worker.engine.device import resolve_runtime

    return resolve_runtime(settings.device, settings.dtype, fields=("IPROX_DEVICE", "IPROX_DTYPE"))


def model_cache(settings: Settings) -> ModelCache | None:
    """This process's model cache of ``settings.model_cache_size`` entries (``None`` at 0)."""
    from worker.engine.pipeline import ModelCache

    size = settings.model_cache_size
    if size < 1:
        return None
    if size not in _caches:
        _caches[size] = ModelCache(max_models=size)
    return _caches[size]


def clear_model_caches() -> None:
    """Drop every cached model (tests; a worker keeps its cache for its lifetime)."""
    for cache in _caches.values():
        cache.clear()
    _caches.clear()
