"""Domain exceptions raised by the engine.

The engine never knows about HTTP or Celery: tasks turn these into a failed job with
``code`` and ``message``; the CLI prints them and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class EngineError(Exception):
    """Base class; ``code`` is a stable machine-readable identifier."""

    code = "engine_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DataFormatError(EngineError):
    """A data file is unreadable, malformed or in an unknown format."""

    code = "data_format"


class EmptyDatasetError(EngineError):
    """A data file holds no usable record."""

    code = "empty_dataset"


class NoResponseTokensError(EngineError):
    """A record has no loss-bearing (response) token left after tokenisation/truncation."""

    code = "no_response_tokens"


class ModelNotFoundError(EngineError):
    """A model name, path or preset cannot be resolved (the message says what to install)."""

    code = "model_not_found"


class ArtifactError(EngineError):
    """A saved proxy or gradient store is missing, corrupt, or does not match its manifest."""

    code = "artifact"


class ConfigError(EngineError):
    """A hyperparameter is out of range; ``field`` names it when one field is to blame."""

    code = "config"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def under(self, prefix: str, renames: dict[str, str] | None = None) -> ConfigError:
        """The same error with its field named as the caller spells it: ``prefix.name``
        (``renames`` maps the engine's names back to the caller's)."""
        if self.field is None:
            return ConfigError(f"{prefix}: {self.message}")
        name = (renames or {}).get(self.field, self.field)
        message = self.message
        if message.startswith(self.field):
            message = name + message[len(self.field) :]
        return ConfigError(f"{prefix}.{message}", field=f"{prefix}.{name}")


class MathError(EngineError):
    """A math function got inputs it cannot work on (an empty matrix, a size below what the
    model needs): the job's data or settings, not a bug of the engine."""

    code = "math"


class OutOfMemoryError(EngineError):
    """A batch of one sample does not fit in the device's memory."""

    code = "out_of_memory"


class Cancelled(EngineError):
    """The caller asked to stop; raised at the next batch boundary."""

    code = "cancelled"


_MATH = Path(__file__).resolve().parent / "math"


@contextmanager
def math_boundary() -> Iterator[None]:
    """Turn a ``ValueError`` raised in (or below) ``worker/engine/math/`` into a :class:`MathError`.

    The math functions are pure and raise plain ``ValueError`` on inputs they cannot take; the
    engine's facade wraps its calls in this, so such an error reaches a job as ``math`` with its
    message, never as ``internal``. A ``ValueError`` raised elsewhere is a bug and passes on.
    """
    try:
        yield
    except ValueError as exc:
        if not _raised_in_math(exc):
            raise
        raise MathError(str(exc)) from exc


def _raised_in_math(exc: BaseException) -> bool:
    """Some frame between the boundary and the raise is a ``math/`` function."""
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve().parent == _MATH:
            return True
        tb = tb.tb_next
    return False
