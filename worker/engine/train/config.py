"""Fine-tuning hyperparameters: one frozen dataclass, saved beside every run it produced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from worker.engine.configio import config_from_dict, config_to_dict
from worker.engine.errors import ConfigError
from worker.engine.params import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, check_params, param


def _f(default: Any, help: str, range: Range | None = None) -> Any:
    return param(help, default, range)


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune a causal LM on a set of records (loss on response tokens only)."""

    epochs: float = _f(1.0, "passes over the data; fractional values stop part-way", POSITIVE)
    lr: float = _f(2e-5, "peak AdamW learning rate (after warm-up)", POSITIVE)
    batch_size: int = _f(4, "records per optimiser step", AT_LEAST_ONE)
    max_length: int = _f(256, "tokens per record; truncation keeps the response", Range(ge=2))
    lora_rank: int = _f(
        0, "LoRA rank on every decoder linear layer; 0 = full fine-tuning", NON_NEGATIVE
    )
    lora_alpha: int = _f(
        0, "LoRA scaling numerator (scale = alpha / rank); 0 = twice the rank", NON_NEGATIVE
    )
    lora_dropout: float = _f(0.0, "dropout on the LoRA input", Range(ge=0, lt=1))
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay", NON_NEGATIVE)
    warmup_ratio: float = _f(
        0.03, "fraction of steps with a linearly rising learning rate", Range(ge=0, lt=1)
    )
    schedule: Literal["linear", "constant"] = _f(
        "linear", "after warm-up: linear decay to zero, or constant"
    )
    grad_clip: float = _f(
        1.0, "clip the global gradient norm to this; 0 = no clipping", NON_NEGATIVE
    )
    save_steps: tuple[int, ...] = _f(
        (), "optimiser steps after which to save a checkpoint (the last step is always saved)"
    )
    seed: int = _f(0, "seeds data order and LoRA initialisation", NON_NEGATIVE)
    save_optimizer_state: bool = _f(
        False,
        "also save AdamW's moments at each checkpoint (optimizer.safetensors, twice the trained "
        "parameters' size), for Adam-preconditioned scoring (LESS)",
    )

    def __post_init__(self) -> None:
        check_params(self)
        if not all(s >= 1 for s in self.save_steps):
            raise ConfigError("save_steps must be positive step numbers", field="save_steps")
        object.__setattr__(self, "save_steps", tuple(sorted(set(self.save_steps))))

    @property
    def lora(self) -> bool:
        return self.lora_rank > 0

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        return config_from_dict(cls, data, "FinetuneConfig")
