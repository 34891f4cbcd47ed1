"""The distillation loss by hand, evaluation, and the shared loop: real CIFAR path, resuming,
distillation with mixup, progress reporting."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from micronet_score.compress.data import Loader, make_loaders, write_cifar_fixture
from micronet_score.compress.models import DenseNet
from micronet_score.compress.train import (
    DistillConfig,
    EpochMetrics,
    Labelled,
    RichProgress,
    TrainConfig,
    distill,
    evaluate,
    kd_loss,
    train,
)
from micronet_score.errors import UserError

MakeModel = Callable[[int], DenseNet]
LN3 = math.log(3)


class Interrupted(Exception):
    pass


class Recorder:
    """Records the loop's progress calls; raises after epoch ``stop_after`` like a Ctrl-C."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.stop_after = stop_after

    def start_epoch(self, epoch: int, epochs: int, steps: int, *, label: str = "") -> None:
        self.calls.append(("start", epoch, epochs, steps, *([label] if label else [])))

    def advance(self, steps: int, loss: float, accuracy: float, images_per_s: float) -> None:
        self.calls.append(("advance", steps))

    def end_epoch(self, metrics: EpochMetrics, *, label: str = "") -> None:
        self.calls.append(("end", metrics.epoch, *([label] if label else [])))
        if metrics.epoch == self.stop_after:
            raise Interrupted


class Recording(nn.Module):
    """Keeps a copy of every input, to see what a model was shown."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        out: torch.Tensor = self.inner(x)
        return out


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# Two samples, two classes, T = 2.
# 1: student (0, 0) -> q = (1/2, 1/2); teacher (0, 2 ln 3) / T = (0, ln 3) -> p = (1/4, 3/4);
#    KL = 1/4 ln(1/4 / 1/2) + 3/4 ln(3/4 / 1/2); label 1: CE = -ln(1/2) = ln 2.
# 2: student (0, 2 ln 3) / T -> q = (1/4, 3/4); teacher (0, 0) -> p = (1/2, 1/2);
#    KL = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4); label 0: softmax(0, 2 ln 3) = (1/10, 9/10),
#    CE = ln 10.
STUDENT = torch.tensor([[0.0, 0.0], [0.0, 2 * LN3]])
TEACHER = torch.tensor([[0.0, 2 * LN3], [0.0, 0.0]])
KL = (0.25 * math.log(0.5) + 0.75 * math.log(1.5) + 0.5 * math.log(2) + 0.5 * math.log(2 / 3)) / 2
CE = (math.log(2) + math.log(10)) / 2


def test_kd_loss_by_hand() -> None:
    loss = kd_loss(STUDENT, TEACHER, torch.tensor([1, 0]), temperature=2.0, alpha=0.75)
    # batchmean divides the summed KL by the batch size 2; T^2 = 4.
    assert loss.item() == pytest.approx(0.75 * 4 * KL + 0.25 * CE, rel=1e-6)


def test_kd_loss_terms_alone() -> None:
    labels = torch.tensor([1, 0])
    assert kd_loss(STUDENT, TEACHER, labels, 2.0, alpha=1.0).item() == pytest.approx(4 * KL)
    assert kd_loss(STUDENT, TEACHER, labels, 2.0, alpha=0.0).item() == pytest.approx(CE)
    assert kd_loss(STUDENT, STUDENT, labels, 3.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_soft_targets() -> None:
    one_hot = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert kd_loss(STUDENT, TEACHER, one_hot, 2.0, 0.75).item() == pytest.approx(
        0.75 * 4 * KL + 0.25 * CE
    )
    # Half-and-half targets: -(ln 1/2 + ln 1/2)/2 = ln 2 for sample 1,
    # -(ln 1/10 + ln 9/10)/2 for sample 2.
    half = torch.full((2, 2), 0.5)
    expected = (math.log(2) - (math.log(0.1) + math.log(0.9)) / 2) / 2
    assert kd_loss(STUDENT, TEACHER, half, 2.0, 0.0).item() == pytest.approx(expected)


def test_evaluate_counts_and_restores_mode() -> None:
    # The "images" are the logits themselves: predictions 0, 1, 2, 0 against labels 0, 1, 0, 0.
    logits = torch.eye(3)[[0, 1, 2, 0]]
    loader = DataLoader(TensorDataset(logits, torch.tensor([0, 1, 0, 0])), batch_size=3)
    model = nn.Flatten()
    assert evaluate(model.train(), loader, "cpu") == 0.75
    assert model.training
    assert evaluate(model.eval(), loader, "cpu") == 0.75
    assert not model.training


@pytest.mark.parametrize(
    ("optimizer", "mixup", "cutmix"), [("sgd", 0.0, 0.0), ("adam", 0.2, 0.0), ("sgd", 0.0, 1.0)]
)
def test_one_step_through_the_cifar_reader(
    tmp_path: Path, tiny_densenet: MakeModel, optimizer: str, mixup: float, cutmix: float
) -> None:
    write_cifar_fixture(tmp_path, n_train=8, n_test=4)
    train_loader, test_loader = make_loaders("cifar10", tmp_path, 8, verify_checksums=False)
    model, initial = tiny_densenet(0), tiny_densenet(0)
    cfg = TrainConfig(
        epochs=1, lr=0.05, optimizer=optimizer,  # type: ignore[arg-type]
        mixup_alpha=mixup, cutmix_alpha=cutmix, device="cpu",
    )
    recorder = Recorder()
    result = train(model, train_loader, test_loader, cfg, progress=recorder)
    assert recorder.calls == [("start", 1, 1, 1), ("advance", 1), ("end", 1)]
    (metrics,) = result.history
    assert (metrics.epoch, metrics.lr) == (1, 0.05)
    assert (metrics.train_acc * 8).is_integer()
    assert (metrics.test_acc * 4).is_integer()
    assert result.test_acc == metrics.test_acc
    assert not torch.equal(model.conv1.weight, initial.conv1.weight)


def test_resume_continues_where_it_stopped(
    tmp_path: Path, tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    cfg = TrainConfig(epochs=2, lr=0.1, mixup_alpha=0.2, cutmix_alpha=1.0, device="cpu")
    reference = tiny_densenet(0)
    expected = train(reference, *synthetic_loaders, cfg)

    with pytest.raises(Interrupted):
        train(tiny_densenet(0), *synthetic_loaders, cfg, checkpoint_dir=tmp_path,
              progress=Recorder(stop_after=1))
    resumed, recorder = tiny_densenet(0), Recorder()
    result = train(resumed, *synthetic_loaders, cfg, checkpoint_dir=tmp_path, progress=recorder)

    assert recorder.calls == [("start", 2, 2, 2), ("advance", 2), ("end", 2)]
    assert [m.epoch for m in result.history] == [1, 2]
    # Cosine over two epochs: 0.1, then 0.1 * (1 + cos(pi / 2)) / 2.
    assert [m.lr for m in result.history] == pytest.approx([0.1, 0.05])
    assert same_weights(resumed, reference)
    for got, want in zip(result.history, expected.history, strict=True):
        assert (got.loss, got.train_acc, got.test_acc) == (want.loss, want.train_acc, want.test_acc)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [asdict(m) for m in result.history]


def test_finished_run_is_not_retrained(
    tmp_path: Path, tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    cfg = TrainConfig(epochs=1, device="cpu")
    trained = tiny_densenet(0)
    first = train(trained, *synthetic_loaders, cfg, checkpoint_dir=tmp_path)
    again, recorder = tiny_densenet(1), Recorder()
    second = train(again, *synthetic_loaders, cfg, checkpoint_dir=tmp_path, progress=recorder)
    assert recorder.calls == []
    assert second == first
    assert same_weights(again, trained)  # the checkpoint's weights are loaded


def test_no_resume_starts_over(
    tmp_path: Path, tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    cfg = TrainConfig(epochs=1, device="cpu")
    train(tiny_densenet(0), *synthetic_loaders, cfg, checkpoint_dir=tmp_path)
    recorder = Recorder()
    train(tiny_densenet(0), *synthetic_loaders, cfg, checkpoint_dir=tmp_path, resume=False,
          progress=recorder)
    assert recorder.calls == [("start", 1, 1, 2), ("advance", 2), ("end", 1)]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_teacher_sees_the_students_mixed_batch(
    tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    student, teacher = Recording(tiny_densenet(0)), Recording(tiny_densenet(1).eval())
    teacher_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = DistillConfig(epochs=1, mixup_alpha=1.0, device="cpu", temperature=2.0, alpha=0.5)
    distill(student, teacher, *synthetic_loaders, cfg)

    # Two training steps; the student also saw the one test batch.
    assert (len(teacher.inputs), len(student.inputs)) == (2, 3)
    for seen_by_teacher, seen_by_student in zip(teacher.inputs, student.inputs, strict=False):
        assert torch.equal(seen_by_teacher, seen_by_student)
    raw = synthetic_loaders[0].dataset.tensors[0]  # type: ignore[attr-defined]
    assert not any(torch.equal(mixed, image) for mixed in teacher.inputs[0] for image in raw)
    assert not teacher.training
    assert all(torch.equal(v, teacher_weights[k]) for k, v in teacher.state_dict().items())


def test_distill_without_soft_term_is_train(
    tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    trained, distilled = tiny_densenet(0), tiny_densenet(0)
    train(trained, *synthetic_loaders, TrainConfig(epochs=1, cutmix_alpha=1.0, device="cpu"))
    cfg = DistillConfig(epochs=1, cutmix_alpha=1.0, device="cpu", alpha=0.0)
    distill(distilled, tiny_densenet(1), *synthetic_loaders, cfg)
    assert same_weights(distilled, trained)


def test_models_come_back_contiguous(
    tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    # The loop runs channels-last; pruning's parameters_to_vector (a view) and export need the
    # usual layout back, for the student and the teacher alike.
    student, teacher = tiny_densenet(0), tiny_densenet(1)
    distill(student, teacher, *synthetic_loaders, DistillConfig(epochs=1, device="cpu"))
    for model in (student, teacher):
        assert all(tensor.is_contiguous() for tensor in model.state_dict().values())
    assert torch.nn.utils.parameters_to_vector(student.parameters()).numel() == 982


def test_rich_progress_prints_one_line_per_epoch(
    tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    output = io.StringIO()
    with RichProgress(Console(file=output, width=200)) as progress:
        result = train(tiny_densenet(0), *synthetic_loaders, TrainConfig(epochs=2, device="cpu"),
                       progress=progress)
    lines = [line for line in output.getvalue().splitlines() if line]  # the bar leaves blanks
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    for line, metrics in zip(lines, result.history, strict=True):
        assert f"loss {metrics.loss:.4f}  train {metrics.train_acc:.2%}" in line
        assert f"test {metrics.test_acc:.2%}" in line


def test_a_labelled_progress_names_and_counts_one_epoch_runs(
    tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    """Pruning retrains one epoch per `train` call: each line must say which step and which of
    its epochs, not "epoch 1" every time."""
    output, recorder = io.StringIO(), Recorder()
    shown = RichProgress(Console(file=output, width=200))  # never started, as off a terminal
    model, cfg = tiny_densenet(0), TrainConfig(epochs=1, device="cpu")
    for progress in (shown, recorder):
        for epoch in (1, 2):
            labelled = Labelled(progress, "step 3/10 (sparsity 27.1%)", epoch, 5)
            train(model, *synthetic_loaders, cfg, progress=labelled)
    lines = [line.split("  ")[0] for line in output.getvalue().splitlines() if line]
    assert lines == ["step 3/10 (sparsity 27.1%) epoch 1/5", "step 3/10 (sparsity 27.1%) epoch 2/5"]
    label = "step 3/10 (sparsity 27.1%)"
    assert recorder.calls == [("start", 1, 5, 2, label), ("advance", 2), ("end", 1, label),
                              ("start", 2, 5, 2, label), ("advance", 2), ("end", 2, label)]


def test_configs_reject_bad_values() -> None:
    with pytest.raises(UserError, match=r"^epochs must be at least 1; lr must be positive$"):
        TrainConfig(epochs=0, lr=0.0)
    with pytest.raises(UserError, match=r"^alpha must be in \[0, 1\]$"):
        DistillConfig(alpha=1.5)


@pytest.mark.slow  # compiling takes about a minute on two cores
def test_compiled_run_checkpoints_plain_weights(
    tmp_path: Path, tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    compiled = tiny_densenet(0)
    first = train(compiled, *synthetic_loaders, TrainConfig(epochs=1, compile=True, device="cpu"),
                  checkpoint_dir=tmp_path)
    # The checkpoint holds the model's own keys (no "_orig_mod." prefix), so a plain model
    # resumes from it.
    plain = tiny_densenet(1)
    second = train(plain, *synthetic_loaders, TrainConfig(epochs=1, device="cpu"),
                   checkpoint_dir=tmp_path)
    assert second == first
    assert same_weights(plain, compiled)
