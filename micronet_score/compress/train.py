"""Training and knowledge distillation, as plain functions over frozen configs.

`train` and `distill` share one loop and differ only in the loss, so every feature (mixup and
cutmix, checkpoints, metrics, channels-last, bf16 on CUDA) behaves the same in both. A
checkpoint holds the random generators too, so an interrupted run resumed from it ends with the
same weights as one that was never interrupted. Library code never prints; pass a `Progress`
(e.g. `RichProgress`) to see the loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torchvision.transforms import v2

from micronet_score.compress import distributed
from micronet_score.compress.checkpoint import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    load_checkpoint,
    save_checkpoint,
)
from micronet_score.compress.configs import DistillConfig, TrainConfig
from micronet_score.compress.data import Loader
from micronet_score.compress.distributed import World
from micronet_score.compress.progress import (
    EpochMetrics,
    Labelled,
    Progress,
    RichProgress,
    epoch_name,
)

__all__ = [
    "CHECKPOINT_FILE", "METRICS_FILE", "DistillConfig", "EpochMetrics", "Labelled", "Progress",
    "RichProgress", "StopFn", "TrainConfig", "TrainResult", "distill", "epoch_name", "evaluate",
    "kd_loss", "resolve_device", "train",
]

# Steps between progress updates: each update reads values back from the device.
_PROGRESS_EVERY = 10

# (logits, the batch's images, targets as class indices or probabilities) -> scalar loss
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# Asked after each epoch whether to end training there.
StopFn = Callable[[EpochMetrics], bool]


@dataclass(frozen=True)
class TrainResult:
    history: tuple[EpochMetrics, ...]

    @property
    def test_acc(self) -> float:
        """Test accuracy after the last epoch."""
        return self.history[-1].test_acc


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a device; None picks CUDA when available, else the CPU. Under torchrun with
    several processes, a CUDA device is the process's own GPU (see
    `distributed.process_device`)."""
    return distributed.process_device(name)


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


def evaluate(
    model: nn.Module, loader: Loader, device: torch.device | str, *, world: World | None = None
) -> float:
    """Top-1 accuracy on ``loader``, in eval mode; the model's training mode is restored.

    With a ``world`` of several processes, every process must call it: each evaluates its own
    shard of the loader's data set and the counts are summed, so the result is the accuracy on
    the whole data set, the same in every process. Raises ValueError on an empty loader.
    """
    device = torch.device(device)
    world = world or World()
    loader = distributed.shard_test(loader, world)
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
    right, images = (distributed.sum_over_processes((correct.item(), total), device)
                     if world.distributed else (correct.item(), total))
    if images == 0:
        raise ValueError("evaluate needs a loader with at least one image")
    return right / images


def train(
    model: nn.Module,
    train_loader: Loader,
    test_loader: Loader,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    label: str = "",
    stop: StopFn | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy (with ``cfg.label_smoothing``): one optimizer
    and one cosine schedule over ``cfg.epochs``.

    With ``checkpoint_dir``, each epoch saves ``checkpoint.pt`` (model, optimizer, scheduler,
    epoch, history, random generators) and appends a line to ``metrics.jsonl``. With ``resume``
    and a checkpoint there, training continues after its last epoch; otherwise it starts over
    and an old ``metrics.jsonl`` is removed. ``label`` goes to ``progress`` with every epoch
    (e.g. a pruning step's name). ``stop`` is asked after each epoch and ends training early when
    it says so (the schedule is not shortened: it is the one of ``cfg.epochs``); a checkpoint of
    a run stopped early resumes at the next epoch, without asking ``stop`` again.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) the processes train one model with
    DistributedDataParallel: see `micronet_score.compress.distributed` for how the batch and the
    test set are split, and why only process 0 writes the checkpoint and reports progress.
    """
    smoothing = cfg.label_smoothing

    def loss_fn(logits: torch.Tensor, _images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)

    return _fit(model, train_loader, test_loader, cfg, loss_fn,
                _Loop(checkpoint_dir, resume, progress, label, stop))


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
    label: str = "",
    stop: StopFn | None = None,
) -> TrainResult:
    """Train ``student`` in place with `kd_loss` against ``teacher``; otherwise like `train`.

    The teacher sees exactly the student's (possibly mixed) batch, so its soft targets describe
    the images the student is graded on. The teacher is left in eval mode on the device; under
    torchrun each process holds a copy of it and runs it on its own part of the batch.
    """
    distributed.ensure_process_group(cfg.device)
    device = resolve_device(cfg.device)
    with _on_device(teacher.eval(), device, compile_model=cfg.compile,
                    parallel=False) as (teacher_run, _):

        def loss_fn(
            logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor
        ) -> torch.Tensor:
            with torch.no_grad():
                teacher_logits = teacher_run(images)
            return kd_loss(
                logits, teacher_logits, targets, cfg.temperature, cfg.alpha,
                label_smoothing=cfg.label_smoothing,
            )

        return _fit(student, train_loader, test_loader, cfg, loss_fn,
                    _Loop(checkpoint_dir, resume, progress, label, stop))


@dataclass(frozen=True)
class _Loop:
    """What `train` and `distill` pass on to the loop besides the model, data and loss."""

    checkpoint_dir: str | Path | None
    resume: bool
    progress: Progress | None
    label: str
    stop: StopFn | None


def _fit(
    model: nn.Module,
    train_loader: Loader,
    test_loader: Loader,
    cfg: TrainConfig,
    loss_fn: LossFn,
    loop: _Loop,
) -> TrainResult:
    """The loop behind `train` and `distill`; they differ only in ``loss_fn``."""
    world = distributed.ensure_process_group(cfg.device)
    device = resolve_device(cfg.device)
    train_loader = distributed.shard_train(train_loader, world)
    test_loader = distributed.shard_test(test_loader, world)
    progress = loop.progress if world.main else None
    with _on_device(model, device, compile_model=cfg.compile, parallel=True) as (runner, judge):
        optimizer = _optimizer(model, cfg)
        scheduler = CosineAnnealingLR(optimizer, T_max=cfg.epochs)
        mixer = _mixer(cfg)
        folder = None if loop.checkpoint_dir is None else Path(loop.checkpoint_dir)
        history: list[EpochMetrics] = []
        if folder is not None and loop.resume and (folder / CHECKPOINT_FILE).exists():
            history = load_checkpoint(folder / CHECKPOINT_FILE, model, optimizer, scheduler)
        else:
            # Each process its own augmentation stream; process 0's is a single process's.
            torch.manual_seed(cfg.seed + world.rank)
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                if world.main:
                    (folder / METRICS_FILE).unlink(missing_ok=True)
        for epoch in range(len(history) + 1, cfg.epochs + 1):
            lr = float(optimizer.param_groups[0]["lr"])
            distributed.set_epoch(train_loader, cfg.seed + epoch)
            if progress is not None:
                progress.start_epoch(epoch, cfg.epochs, len(train_loader), label=loop.label)
            loss, train_acc, images_per_s = _train_epoch(
                runner, train_loader, optimizer, loss_fn, mixer, device, progress
            )
            scheduler.step()
            distributed.sync_buffers(model)  # the model every process evaluates and saves
            accuracy = evaluate(judge, test_loader, device, world=world)
            metrics = EpochMetrics(epoch, loss, train_acc, accuracy, images_per_s, lr)
            history.append(metrics)
            if folder is not None and world.main:
                save_checkpoint(folder, model, optimizer, scheduler, history, cfg)
            if progress is not None:
                progress.end_epoch(metrics, label=loop.label)
            if loop.stop is not None and loop.stop(metrics):
                break
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
    """One pass over ``loader``: (mean loss, train accuracy, images per second), the first two
    over every process's images and the rate summed over the processes (progress updates show
    this process's own figures).

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
    rate = seen / (time.perf_counter() - start)
    total_loss, right, images, rate = distributed.sum_over_processes(
        (loss_sum.item(), float(correct.item()), float(seen), rate), device)
    return total_loss / images, right / images, rate


@contextlib.contextmanager
def _on_device(
    model: nn.Module, device: torch.device, *, compile_model: bool, parallel: bool
) -> Iterator[tuple[nn.Module, nn.Module]]:
    """``model`` on ``device`` in channels-last memory format while the block runs, and two
    modules: the one that trains it (compiled if asked; in DistributedDataParallel when
    ``parallel`` and there are several processes) and the one that evaluates it (the model
    itself under several processes, as DDP's forward may communicate). Afterwards ``model`` is
    contiguous again, the layout pruning (``parameters_to_vector`` views) and export expect.

    Convolutions run faster channels-last on CUDA and on the CPU alike: on two CPU cores
    ``tests/bench/bench_train.py`` measured 1.76x for densenet121_gr4_g2 and 1.02x to 1.31x for
    densenet121_gr4 (three runs); results are the same up to float rounding.
    """
    model.to(device).to(memory_format=torch.channels_last)
    try:
        wrapped = distributed.wrap(model, device) if parallel else model
        runner = cast(nn.Module, torch.compile(wrapped)) if compile_model else wrapped
        yield runner, (runner if wrapped is model else model)
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
