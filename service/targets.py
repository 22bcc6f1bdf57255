"""A light check of ``target_model`` (the API cannot load the engine): a configured preset name,
or a model folder (``config.json``) or ``.gguf`` file under a configured model root."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from service.errors import ValidationFailed


def resolve_target_model(
    ref: str, *, presets: Sequence[str], model_roots: Sequence[Path], field: str = "target_model"
) -> str:
    """The canonical reference: the preset name, or the resolved absolute path."""
    if ref in presets:
        return ref
    raw = unquote(urlsplit(ref).path) if ref.startswith("file://") else ref
    if ".." in Path(raw).parts:
        raise ValidationFailed(f"{ref!r}: '..' segments are not allowed", field=field)
    if not model_roots:
        raise ValidationFailed(
            f"unknown model {ref!r}: presets are {', '.join(presets)}; local models need "
            "IPROX_MODEL_ROOTS",
            field=field,
        )
    candidates = [Path(raw)] if Path(raw).is_absolute() else [r / raw for r in model_roots]
    for candidate in candidates:
        path = candidate.resolve()
        if not any(path.is_relative_to(r.resolve()) for r in model_roots):
            continue
        if path.is_dir() and (path / "config.json").is_file():
            return str(path)
        if path.is_file() and path.suffix == ".gguf":
            return str(path)
    roots = ", ".join(str(r) for r in model_roots)
    raise ValidationFailed(
        f"unknown model {ref!r}: not a preset ({', '.join(presets)}) nor a model folder with "
        f"config.json (or a .gguf file) under the model roots ({roots})",
        field=field,
    )
