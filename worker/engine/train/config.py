"""Fine-tuning hyperparameters: one frozen dataclass, saved beside every run it produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from worker.engine.configio import config_from_dict, config_to_dict
from worker.engine.errors import ConfigError


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune a causal LM on a set of records (loss on response tokens only)."""

    epochs: float = _f(1.0, "passes over the data; fractional values stop part-way")
    lr: float = _f(2e-5, "peak AdamW learning rate (after warm-up)")
    batch_size: int = _f(4, "records per optimiser step")
    max_length: int = _f(256, "tokens per record; truncation keeps the response")
    lora_rank: int = _f(0, "LoRA rank on every decoder linear layer; 0 = full fine-tuning")
    lora_alpha: int = _f(0, "LoRA scaling numerator (scale = alpha / rank); 0 = twice the rank")
    lora_dropout: float = _f(0.0, "dropout on the LoRA input")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay")
    warmup_ratio: float = _f(0.03, "fraction of steps with a linearly rising learning rate")
    schedule: Literal["linear", "constant"] = _f(
        "linear", "after warm-up: linear decay to zero, or constant"
    )
    grad_clip: float = _f(1.0, "clip the global gradient norm to this; 0 = no clipping")
    save_steps: tuple[int, ...] = _f(
        (), "optimiser steps after which to save a checkpoint (the last step is always saved)"
    )
    seed: int = _f(0, "seeds data order and LoRA initialisation")
    save_optimizer_state: bool = _f(
        False,
        "also save AdamW's moments at each checkpoint (optimizer.safetensors, twice the trained "
        "parameters' size), for Adam-preconditioned scoring (LESS)",
    )

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, "epochs must be > 0"),
            (self.lr > 0, "lr must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_length >= 2, "max_length must be >= 2"),
            (self.lora_rank >= 0, "lora_rank must be >= 0"),
            (self.lora_alpha >= 0, "lora_alpha must be >= 0"),
            (0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.schedule in ("linear", "constant"), "schedule must be 'linear' or 'constant'"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (all(s >= 1 for s in self.save_steps), "save_steps must be positive step numbers"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"FinetuneConfig: {message}")
        object.__setattr__(self, "save_steps", tuple(sorted(set(self.save_steps))))

    @property
    def lora(self) -> bool:
        return self.lora_rank > 0

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        return config_from_dict(cls, data, "FinetuneConfig")
