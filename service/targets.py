"""A light check of ``target_model`` (the API cannot load the engine): a configured preset name,
a model folder (``config.json``) or ``.gguf`` file under a configured model root, or a Hugging
Face hub id (``org/name[@revision]``) that ``IPROX_ALLOWED_MODELS`` allows.

Hub ids are gated so that a tenant cannot make the workers download arbitrary repositories:
with ``IPROX_ALLOWED_MODELS`` unset, only ids whose snapshot is already in the hub cache
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``, read when the
request is checked) are accepted; with it set, only ids matching one of its glob patterns
(``Qwen/*``, ``meta-llama/Llama-3.2-*``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import unquote, urlsplit

from service.errors import ValidationFailed

# The engine's spelling of hub ids (worker/engine/models.py), repeated because the API may not
# import the engine; a test checks that the two agree.
_HUB_ID = re.compile(r"^([A-Za-z0-9][\w.-]{0,95})/([A-Za-z0-9][\w.-]{0,95})(?:@([\w./-]{1,200}))?$")


def parse_hub_id(ref: str) -> tuple[str, str | None] | None:
    """``("org/name", revision or None)`` when ``ref`` is spelled as a hub id, else ``None``."""
    m = _HUB_ID.match(ref.strip())
    if m is None or ".." in ref or m.group(1).endswith(".") or m.group(2).endswith("."):
        return None
    return f"{m.group(1)}/{m.group(2)}", m.group(3)


def hub_cache_dir() -> Path:
    """The hub cache the workers read (see the module doc)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def in_hub_cache(repo_id: str, revision: str | None, cache: Path | None = None) -> bool:
    """The cache holds a snapshot of ``repo_id`` (at ``revision``: a ref or a commit hash)."""
    repo = (cache or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return False
    rev = revision or "main"
    ref_file = repo / "refs" / rev
    if ref_file.is_file():
        rev = ref_file.read_text(encoding="utf-8").strip()
    snapshot = snapshots / rev
    return snapshot.is_dir() and (snapshot / "config.json").exists()


def _check_hub(
    ref: str, repo_id: str, revision: str | None, allowed: Sequence[str], field: str
) -> str:
    if allowed:
        if not any(fnmatchcase(repo_id, pattern) for pattern in allowed):
            raise ValidationFailed(
                f"hub model {repo_id!r} is not allowed here: IPROX_ALLOWED_MODELS accepts "
                f"{', '.join(allowed)}",
                field=field,
            )
    elif not in_hub_cache(repo_id, revision):
        at = f" at revision {revision!r}" if revision else ""
        raise ValidationFailed(
            f"hub model {repo_id!r}{at} is not in the workers' model cache ({hub_cache_dir()}), "
            "and IPROX_ALLOWED_MODELS (patterns of hub ids the workers may download) is unset",
            field=field,
        )
    return f"{repo_id}@{revision}" if revision else repo_id


def resolve_target_model(
    ref: str,
    *,
    presets: Sequence[str],
    model_roots: Sequence[Path],
    allowed_models: Sequence[str] = (),
    field: str = "target_model",
) -> str:
    """The canonical reference: the preset name, the resolved absolute path, or the hub id."""
    if ref in presets:
        return ref
    raw = unquote(urlsplit(ref).path) if ref.startswith("file://") else ref
    if ".." in Path(raw).parts:
        raise ValidationFailed(f"{ref!r}: '..' segments are not allowed", field=field)
    local = _local_model(ref, raw, model_roots)
    if local is not None:
        return local
    hub = parse_hub_id(ref)
    if hub is not None:
        return _check_hub(ref, *hub, allowed_models, field)
    if not model_roots:
        raise ValidationFailed(
            f"unknown model {ref!r}: presets are {', '.join(presets)}; local models need "
            "IPROX_MODEL_ROOTS; hub ids are spelled org/name[@revision]",
            field=field,
        )
    roots = ", ".join(str(r) for r in model_roots)
    raise ValidationFailed(
        f"unknown model {ref!r}: not a preset ({', '.join(presets)}) nor a model folder with "
        f"config.json (or a .gguf file) under the model roots ({roots})",
        field=field,
    )


def _local_model(ref: str, raw: str, model_roots: Sequence[Path]) -> str | None:
    """The model folder or ``.gguf`` file ``raw`` names under a model root, if there is one."""
    candidates = [Path(raw)] if Path(raw).is_absolute() else [r / raw for r in model_roots]
    for candidate in candidates:
        path = candidate.resolve()
        if not any(path.is_relative_to(r.resolve()) for r in model_roots):
            continue
        if path.is_dir() and (path / "config.json").is_file():
            return str(path)
        if path.is_file() and path.suffix == ".gguf":
            return str(path)
    return None
