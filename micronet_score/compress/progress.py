"""How training reports itself: per-epoch metrics, the `Progress` protocol the loop calls, and
`RichProgress`, the terminal display (a bar per epoch, then one line), used by the CLI.

Library code never prints; a caller passes a `Progress` to see the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBar


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
