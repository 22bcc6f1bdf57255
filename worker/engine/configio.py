"""JSON round trips for the engine's frozen hyperparameter dataclasses.

Configs are saved next to every artifact they produced (manifests, run folders) and read back
from there, so unknown keys (a manifest written by another version) are an error, not ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, TypeVar

from worker.engine.errors import ConfigError

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """``asdict`` with tuple fields as lists: JSON-ready."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def config_from_dict(cls: type[T], data: Mapping[str, Any], label: str) -> T:
    """Inverse of :func:`config_to_dict` for dataclass ``cls``; ``label`` names it in errors."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{label}: unknown field(s) {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
