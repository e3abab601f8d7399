"""Typed configuration with validation: unknown keys and out-of-range values are errors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from archadapt.errors import ConfigError

T = TypeVar("T")

# Numeric precisions of the training loops, implemented in archadapt.precision.
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a dict, rejecting unknown keys and nested unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown keys {unknown} in {where or cls.__name__}; allowed: {sorted(known)}")
    values = {}
    for name, value in data.items():
        default = _default_of(known[name])
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value, f"{where}.{name}" if where else name)
        elif isinstance(default, tuple):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def load_json(cls: type[T], path: Path) -> T:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"config file {path} not found") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from error
    return from_dict(cls, data, str(path))


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} is {value}; allowed: {low} to {high}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} is {value!r}; allowed: {list(choices)}")


@dataclass(frozen=True)
class InnerLoopConfig:
    """The unrolled optimizer that adapts the posterior from the prior (the inner loop)."""

    inner_steps: int = 5
    inner_lr: float = 0.05  # step size of the weights and the task head
    inner_lr_alpha: float = 1.0  # step size of the alpha logits
    batch_size: int = 64  # support examples per step; the whole support set when smaller
    sampling: str = "hard"  # "hard" (straight-through) or "soft" Gumbel-Softmax
    temperature: float = 1.0  # Gumbel temperature of the first step
    temperature_end: float = 1.0  # temperature of the last step, annealed geometrically
    beta_alpha: float = 1.0  # weight of KL(q(alpha) || p(alpha))
    beta_w: float = 1.0  # weight of KL(q(w) || p(w))
    prior_sigma: float = 0.1  # standard deviation of the weight prior
    weight_sampling: str = "point"  # "point" (q(w) is a point mass) or "gaussian"
    grad_clip: float = 5.0  # maximum global gradient norm per step
    precision: str = "float32"  # "float32" or "bfloat16" (autocast with float32 weights)

    def __post_init__(self) -> None:
        check_range("inner_steps", self.inner_steps, 0, 10_000)
        check_range("inner_lr", self.inner_lr, 0.0, 10.0)
        check_range("inner_lr_alpha", self.inner_lr_alpha, 0.0, 100.0)
        check_range("batch_size", self.batch_size, 1, 100_000)
        check_choice("sampling", self.sampling, ("hard", "soft"))
        check_range("temperature", self.temperature, 1e-3, 100.0)
        check_range("temperature_end", self.temperature_end, 1e-3, 100.0)
        check_range("beta_alpha", self.beta_alpha, 0.0, 1e6)
        check_range("beta_w", self.beta_w, 0.0, 1e6)
        check_range("prior_sigma", self.prior_sigma, 1e-6, 100.0)
        check_choice("weight_sampling", self.weight_sampling, ("point", "gaussian"))
        check_range("grad_clip", self.grad_clip, 0.0, 1e6)
        check_choice("precision", self.precision, PRECISIONS)

    def temperature_at(self, step: int) -> float:
        """Temperature of step `step`, geometric from `temperature` to `temperature_end`."""
        if self.inner_steps <= 1:
            return self.temperature
        fraction = step / (self.inner_steps - 1)
        return self.temperature * (self.temperature_end / self.temperature) ** fraction


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning of the derived network on the support set."""

    steps: int = 60
    lr: float = 0.002
    weight_decay: float = 1e-4
    batch_size: int = 64
    augment: bool = True  # random shifts of up to 2 pixels
    horizontal_flip: bool = False  # random left-right mirroring; only for mirror-symmetric classes
    lr_schedule: str = "constant"  # or "one_cycle": warm up to lr over 15% of the steps, then anneal
    mixup_alpha: float = 0.0  # Beta(a, a) mixing of image pairs and their labels; 0 turns it off
    ema_decay: float = 0.0  # exponential moving average of the weights, returned instead; 0 turns it off
    precision: str = "float32"  # "float32" or "bfloat16" (autocast with float32 weights)

    def __post_init__(self) -> None:
        check_range("finetune steps", self.steps, 0, 100_000)
        check_choice("finetune lr_schedule", self.lr_schedule, ("constant", "one_cycle"))
        check_range("finetune mixup_alpha", self.mixup_alpha, 0.0, 100.0)
        check_range("finetune ema_decay", self.ema_decay, 0.0, 0.9999)
        check_range("finetune lr", self.lr, 0.0, 10.0)
        check_range("finetune weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("finetune batch_size", self.batch_size, 1, 100_000)
        check_choice("finetune precision", self.precision, PRECISIONS)
