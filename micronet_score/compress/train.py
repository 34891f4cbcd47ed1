"""Training and knowledge distillation, as plain functions over frozen configs.

`train` and `distill` share one loop and differ only in the loss, so every feature (mixup and
cutmix, checkpoints, metrics, channels-last, bf16 on CUDA) behaves the same in both. A
checkpoint holds the random generators too, so an interrupted run resumed from it ends with the
same weights as one that was never interrupted. Library code never prints; pass a `Progress`
(e.g. `RichProgress`) to see the loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBar
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torchvision.transforms import v2

from micronet_score.compress.data import Loader
from micronet_score.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"

# Steps between progress updates: each update reads values back from the device.
_PROGRESS_EVERY = 10

# (logits, the batch's images, targets as class indices or probabilities) -> scalar loss
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch. ``train_acc`` counts a mixed image as right when the prediction is its
    dominant label; ``lr`` is the rate the epoch trained with; ``images_per_s`` excludes
    evaluation (but not compilation, in the first epoch of a compiled run)."""

    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    images_per_s: float
    lr: float


@dataclass(frozen=True)
class TrainResult:
    history: tuple[EpochMetrics, ...]

    @property
    def test_acc(self) -> float:
        """Test accuracy after the last epoch."""
        return self.history[-1].test_acc


class Progress(Protocol):
    """What the loop reports; the CLI's display implements it, tests record it. ``label``
    names what the epoch belongs to, e.g. a pruning step, and is shown before it ("" for
    plain training)."""

    def start_epoch(self, epoch: int, epochs: int, steps: int, *, label: str = "") -> None: ...

    def advance(self, steps: int, loss: float, accuracy: float, images_per_s: float) -> None: ...

    def end_epoch(self, metrics: EpochMetrics, *, label: str = "") -> None: ...


@dataclass(frozen=True)
class Labelled:
    """A `Progress` that forwards to ``inner`` with ``label``, counting the epoch as ``epoch``
    of ``epochs``: for callers that train one epoch per `train` call, as pruning's retraining
    does, and would otherwise show every epoch as 1/1."""

    inner: Progress
    label: str
    epoch: int
    epochs: int

    def start_epoch(self, epoch: int, epochs: int, steps: int, *, label: str = "") -> None:
        self.inner.start_epoch(self.epoch, self.epochs, steps, label=self.label)

    def advance(self, steps: int, loss: float, accuracy: float, images_per_s: float) -> None:
        self.inner.advance(steps, loss, accuracy, images_per_s)

    def end_epoch(self, metrics: EpochMetrics, *, label: str = "") -> None:
        self.inner.end_epoch(replace(metrics, epoch=self.epoch), label=self.label)


def epoch_name(epoch: int, epochs: int, label: str = "") -> str:
    """``"epoch 2/10"``, after ``label`` if any: how the bar and the epoch lines name an epoch."""
    return f"{label} epoch {epoch}/{epochs}" if label else f"epoch {epoch}/{epochs}"


class RichProgress:
    """A rich progress bar per epoch (loss, accuracy, images/s), then one summary line.

    Use as a context manager around `train` or `distill`.
    """

    def __init__(self, console: Console | None = None) -> None:
        self._bar = RichBar(
            TextColumn("{task.fields[name]}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.3f}  acc {task.fields[accuracy]:.1%}  "
                "{task.fields[images_per_s]:,.0f} img/s"
            ),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: TaskID | None = None
        self._epochs = 0  # of the current training run, for the epoch lines

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def start_epoch(self, epoch: int, epochs: int, steps: int, *, label: str = "") -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._epochs = epochs
        self._task = self._bar.add_task(
            "", total=steps, name=epoch_name(epoch, epochs, label), loss=0.0, accuracy=0.0,
            images_per_s=0.0,
        )

    def advance(self, steps: int, loss: float, accuracy: float, images_per_s: float) -> None:
        if self._task is not None:
            self._bar.update(
                self._task, advance=steps, loss=loss, accuracy=accuracy, images_per_s=images_per_s
            )

    def end_epoch(self, metrics: EpochMetrics, *, label: str = "") -> None:
        name = epoch_name(metrics.epoch, max(self._epochs, metrics.epoch), label)
        self._bar.console.print(
            f"{name}  loss {metrics.loss:.4f}  train {metrics.train_acc:.2%}  "
            f"test {metrics.test_acc:.2%}  {metrics.images_per_s:,.0f} img/s  lr {metrics.lr:.4g}",
            markup=False, highlight=False, soft_wrap=True,  # one line, in a log file too
        )


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a device; None picks CUDA when available, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton et al.'s distillation loss.

    alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch, plus
    (1 - alpha) * cross-entropy with ``targets`` (class indices or, after mixup, probabilities).
    The T^2 keeps the soft term's gradients on the hard term's scale whatever T is.
    """
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    )
    hard = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


def evaluate(model: nn.Module, loader: Loader, device: torch.device | str) -> float:
    """Top-1 accuracy on ``loader``, in eval mode; the model's training mode is restored."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    try:
        with torch.no_grad():
            for images, labels in loader:
                with _autocast(device):
                    logits = model(_to_device(images, device))
                correct += (logits.argmax(1) == labels.to(device)).sum()
                total += labels.size(0)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate needs a loader with at least one image")
    return correct.item() / total


def train(
    model: nn.Module,
    train_loader: Loader,
    test_loader: Loader,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy (with ``cfg.label_smoothing``).

    With ``checkpoint_dir``, each epoch saves ``checkpoint.pt`` (model, optimizer, scheduler,
    epoch, history, random generators) and appends a line to ``metrics.jsonl``. With ``resume``
    and a checkpoint there, training continues after its last epoch; otherwise it starts over
    and an old ``metrics.jsonl`` is removed.
    """
    smoothing = cfg.label_smoothing

    def loss_fn(logits: torch.Tensor, _images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)

    return _fit(model, train_loader, test_loader, cfg, loss_fn, checkpoint_dir, resume, progress)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Loader,
    test_loader: Loader,
    cfg: DistillConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``student`` in place with `kd_loss` against ``teacher``; otherwise like `train`.

    The teacher sees exactly the student's (possibly mixed) batch, so its soft targets describe
    the images the student is graded on. The teacher is left in eval mode on the device.
    """
    device = resolve_device(cfg.device)
    with _on_device(teacher.eval(), device, compile_model=cfg.compile) as teacher_run:

        def loss_fn(
            logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor
        ) -> torch.Tensor:
            with torch.no_grad():
                teacher_logits = teacher_run(images)
            return kd_loss(
                logits, teacher_logits, targets, cfg.temperature, cfg.alpha,
                label_smoothing=cfg.label_smoothing,
            )

        return _fit(
            student, train_loader, test_loader, cfg, loss_fn, checkpoint_dir, resume, progress
        )


def _fit(
    model: nn.Module,
    train_loader: Loader,
    test_loader: Loader,
    cfg: TrainConfig,
    loss_fn: LossFn,
    checkpoint_dir: str | Path | None,
    resume: bool,
    progress: Progress | None,
) -> TrainResult:
    """The loop behind `train` and `distill`; they differ only in ``loss_fn``."""
    device = resolve_device(cfg.device)
    with _on_device(model, device, compile_model=cfg.compile) as runner:
        optimizer = _optimizer(model, cfg)
        scheduler = CosineAnnealingLR(optimizer, T_max=cfg.epochs)
        mixer = _mixer(cfg)
        folder = None if checkpoint_dir is None else Path(checkpoint_dir)
        history: list[EpochMetrics] = []
        if folder is not None and resume and (folder / CHECKPOINT_FILE).exists():
            history = _load_checkpoint(folder / CHECKPOINT_FILE, model, optimizer, scheduler)
        else:
            torch.manual_seed(cfg.seed)
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / METRICS_FILE).unlink(missing_ok=True)
        for epoch in range(len(history) + 1, cfg.epochs + 1):
            lr = float(optimizer.param_groups[0]["lr"])
            if progress is not None:
                progress.start_epoch(epoch, cfg.epochs, len(train_loader))
            loss, train_acc, images_per_s = _train_epoch(
                runner, train_loader, optimizer, loss_fn, mixer, device, progress
            )
            scheduler.step()
            metrics = EpochMetrics(
                epoch, loss, train_acc, evaluate(runner, test_loader, device), images_per_s, lr
            )
            history.append(metrics)
            if folder is not None:
                _save_checkpoint(folder, model, optimizer, scheduler, history, cfg)
            if progress is not None:
                progress.end_epoch(metrics)
        return TrainResult(tuple(history))


def _train_epoch(
    runner: nn.Module,
    loader: Loader,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    mixer: Mixer | None,
    device: torch.device,
    progress: Progress | None,
) -> tuple[float, float, float]:
    """One pass over ``loader``: (mean loss, train accuracy, images per second).

    Sums stay on the device and are read once at the end, so the GPU is never waited on
    except for progress updates.
    """
    runner.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = reported = 0
    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader, start=1):
        images = _to_device(images, device)
        targets = labels.to(device, non_blocking=True)
        if mixer is not None:
            images, targets = mixer(images, targets)
        with _autocast(device):
            logits = runner(images)
            loss = loss_fn(logits, images, targets)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)  # Tensor.backward has no type hints
        optimizer.step()
        size = labels.size(0)
        seen += size
        loss_sum += loss.detach() * size
        hard = targets.argmax(1) if targets.is_floating_point() else targets
        correct += (logits.argmax(1) == hard).sum()
        if progress is not None and (step % _PROGRESS_EVERY == 0 or step == len(loader)):
            progress.advance(
                step - reported,
                loss_sum.item() / seen,
                correct.item() / seen,
                seen / (time.perf_counter() - start),
            )
            reported = step
    mean_loss, accuracy = loss_sum.item() / seen, correct.item() / seen
    return mean_loss, accuracy, seen / (time.perf_counter() - start)


@contextlib.contextmanager
def _on_device(
    model: nn.Module, device: torch.device, *, compile_model: bool
) -> Iterator[nn.Module]:
    """``model`` on ``device`` in channels-last memory format while the block runs, and the
    module that runs it (compiled if asked); afterwards ``model`` is contiguous again, the layout
    pruning (``parameters_to_vector`` views) and export expect.

    Convolutions run faster channels-last on CUDA and on the CPU alike: on two CPU cores
    ``tests/bench/bench_train.py`` measured 1.76x for densenet121_gr4_g2 and 1.02x to 1.31x for
    densenet121_gr4 (three runs); results are the same up to float rounding.
    """
    model.to(device).to(memory_format=torch.channels_last)
    try:
        yield cast(nn.Module, torch.compile(model)) if compile_model else model
    finally:
        model.to(memory_format=torch.contiguous_format)


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``; image batches channels-last, to match `_on_device`."""
    if images.dim() != 4:
        return images.to(device, non_blocking=True)
    return images.to(device, memory_format=torch.channels_last, non_blocking=True)


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full precision elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _mixer(cfg: TrainConfig) -> Mixer | None:
    choices = []
    if cfg.mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=cfg.num_classes))
    if cfg.cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=cfg.num_classes))
    if not choices:
        return None
    mixer: Mixer = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
    return mixer


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineAnnealingLR,
    history: list[EpochMetrics],
    cfg: TrainConfig,
) -> None:
    """Write the checkpoint atomically (a crash mid-write keeps the previous one), then log."""
    state = {
        "epoch": len(history),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": [asdict(metrics) for metrics in history],
        "rng": _rng_state(),
        "config": asdict(cfg),
    }
    partial = folder / (CHECKPOINT_FILE + ".partial")
    torch.save(state, partial)
    os.replace(partial, folder / CHECKPOINT_FILE)
    with open(folder / METRICS_FILE, "a", encoding="utf-8") as log:
        log.write(json.dumps(asdict(history[-1])) + "\n")


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineAnnealingLR,
) -> list[EpochMetrics]:
    """Restore everything `_save_checkpoint` wrote; return the history so far."""
    # On the CPU first: the generator state must be a CPU tensor, and load_state_dict moves
    # weights and optimizer state to where the parameters already are.
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["cpu"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return [EpochMetrics(**metrics) for metrics in state["history"]]
