"""Domain exceptions raised by the engine.

The engine never knows about HTTP or Celery: tasks turn these into a failed job with
``code`` and ``message``; the CLI prints them and exits non-zero.
"""

from __future__ import annotations


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
    """A hyperparameter is out of range."""

    code = "config"


class OutOfMemoryError(EngineError):
    """A batch of one sample does not fit in the device's memory."""

    code = "out_of_memory"


class Cancelled(EngineError):
    """The caller asked to stop; raised at the next batch boundary."""

    code = "cancelled"
