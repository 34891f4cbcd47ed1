"""What training is told: the settings of `train.train` and `train.distill`, checked when made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from micronet_score.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``mixup_alpha`` / ``cutmix_alpha`` of 0 turn that augmentation off; with
    both on, each batch uses one of them at random. ``seed`` fixes data order and augmentation
    (seed the model's initialisation yourself, before building it). ``device`` None means CUDA
    when available."""

    epochs: int = 200
    lr: float = 0.1
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    num_classes: int = 10
    seed: int = 0
    compile: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        checks = {
            "epochs must be at least 1": self.epochs >= 1,
            "lr must be positive": self.lr > 0,
            "optimizer must be 'sgd' or 'adam'": self.optimizer in ("sgd", "adam"),
            "label_smoothing must be in [0, 1)": 0 <= self.label_smoothing < 1,
            "mixup_alpha and cutmix_alpha must not be negative": min(
                self.mixup_alpha, self.cutmix_alpha
            ) >= 0,
            "num_classes must be at least 2": self.num_classes >= 2,
        }
        _require(checks)


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """`TrainConfig` plus the distillation loss's temperature and its weight ``alpha``."""

    temperature: float = 4.0
    alpha: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        _require({
            "temperature must be positive": self.temperature > 0,
            "alpha must be in [0, 1]": 0 <= self.alpha <= 1,
        })


def _require(checks: dict[str, bool]) -> None:
    failed = [message for message, ok in checks.items() if not ok]
    if failed:
        raise UserError("; ".join(failed))
