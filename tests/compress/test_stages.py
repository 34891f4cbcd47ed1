"""A recipe's prune and quantize stages: one optimizer per pruning step, and the sparsity column,
measured on the conv and linear weights of the model the scorer reads."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from micronet_score.compress.candidates import weight_sparsity
from micronet_score.compress.data import Loader
from micronet_score.compress.models import DenseNet
from micronet_score.compress.progress import EpochMetrics
from micronet_score.compress.prune import RetrainStep, prune_iteratively
from micronet_score.compress.quantize import quantize_fx
from micronet_score.compress.stages import retrainer
from micronet_score.compress.train import TrainConfig

MakeModel = Callable[[int], DenseNet]


class Steps:
    """Every optimizer step while active: which optimizer made it, and its momentum buffers
    just before and just after (clones; None before the first)."""

    def __init__(self) -> None:
        self.optimizers: list[int] = []
        self.before: list[list[torch.Tensor] | None] = []
        self.after: list[list[torch.Tensor]] = []

    @staticmethod
    def _buffers(optimizer: torch.optim.Optimizer) -> list[torch.Tensor] | None:
        buffers = [optimizer.state[p].get("momentum_buffer")
                   for group in optimizer.param_groups for p in group["params"]]
        if any(buffer is None for buffer in buffers):
            return None
        return [buffer.clone() for buffer in buffers if buffer is not None]

    def pre(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self.optimizers.append(id(optimizer))
        self.before.append(self._buffers(optimizer))

    def post(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        after = self._buffers(optimizer)
        assert after is not None
        self.after.append(after)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        handles = [register_optimizer_step_pre_hook(self.pre),
                   register_optimizer_step_post_hook(self.post)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class Epochs:
    def __init__(self) -> None:
        self.started: list[tuple[int, int, str]] = []
        self.ended: list[EpochMetrics] = []

    def start_epoch(self, epoch: int, epochs: int, steps: int, *, label: str = "") -> None:
        self.started.append((epoch, epochs, label))

    def advance(self, steps: int, loss: float, accuracy: float, images_per_s: float) -> None:
        pass

    def end_epoch(self, metrics: EpochMetrics, *, label: str = "") -> None:
        self.ended.append(metrics)


def test_a_pruning_step_retrains_with_one_optimizer_and_keeps_its_momentum(
    tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    """Three epochs of two batches after one step, the bar out of reach: six SGD steps of one
    optimizer, each starting from the momentum the previous one left, across epochs too, and
    one cosine schedule over the three epochs."""
    steps, epochs = Steps(), Epochs()
    retrain = retrainer(TrainConfig(epochs=1, lr=0.01, device="cpu"), *synthetic_loaders, epochs)
    with steps.recording():
        retrain(tiny_densenet(0), 3, 2.0, RetrainStep(1, 10, 0.1))
    assert len(steps.optimizers) == 6
    assert len(set(steps.optimizers)) == 1
    assert steps.before[0] is None
    for index in range(1, 6):  # 2 and 4 start epochs 2 and 3
        before = steps.before[index]
        assert before is not None, index
        assert all(torch.equal(a, b) for a, b in zip(before, steps.after[index - 1], strict=True))
    label = "step 1/10 (sparsity 10.0%)"
    assert epochs.started == [(1, 3, label), (2, 3, label), (3, 3, label)]
    # Cosine over three epochs from 0.01: 0.01, 0.01 * (1 + cos(pi/3)) / 2, (1 + cos(2pi/3)) / 2.
    assert [m.lr for m in epochs.ended] == pytest.approx([0.01, 0.0075, 0.0025])


def test_retraining_stops_at_the_first_epoch_back_at_the_bar(
    tiny_densenet: MakeModel, synthetic_loaders: tuple[Loader, Loader]
) -> None:
    epochs = Epochs()
    retrain = retrainer(TrainConfig(epochs=1, lr=0.01, device="cpu"), *synthetic_loaders, epochs)
    accuracy = retrain(tiny_densenet(0), 5, 0.0, RetrainStep(2, 3, 0.5))
    assert [m.epoch for m in epochs.ended] == [1]
    assert accuracy == epochs.ended[0].test_acc


# --- The sparsity column -----------------------------------------------------------------------


def _hand_model() -> nn.Sequential:
    """A conv 2->2 (1x1) with 1 zero of 4 weights and a bias of zeros, and a linear 2->2 with
    2 zeros of 4 weights and a zero bias: 3 zeros of 8 weights; the biases must not count."""
    conv, linear = nn.Conv2d(2, 2, 1), nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0, 2.0, 3.0]).reshape(2, 2, 1, 1))
        conv.get_parameter("bias").zero_()
        linear.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        linear.bias.zero_()
    return nn.Sequential(conv, nn.Flatten(), linear)


def test_the_sparsity_is_over_conv_and_linear_weights_only() -> None:
    assert weight_sparsity(_hand_model()) == 3 / 8
    assert weight_sparsity(nn.Sequential(nn.BatchNorm1d(4))) == 0.0


def test_a_quantized_models_sparsity_counts_its_int8_weights(tiny_densenet: MakeModel) -> None:
    """Pruned to half its 848 conv and linear weights, FX-quantized with the classifier float:
    int8 zeros are read from the packed weights; rounding to int8 can only add zeros."""
    model = tiny_densenet(0)

    def keep(model: nn.Module, max_epochs: int, min_accuracy: float, step: RetrainStep) -> float:
        return 1.0

    prune_iteratively(model, keep, step=0.5, steps=1, max_epochs=1, min_accuracy=0.0)
    assert weight_sparsity(model) == 424 / 848
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize_fx(model.eval(), [torch.randn(2, 3, 32, 32)], skip=("linear",))
    zeros = total = 0
    for module in quantized.modules():
        if isinstance(module, nnq.Conv2d):
            weight = module.weight()  # type: ignore[no-untyped-call]
            zeros += int((weight.int_repr() == 0).sum())  # symmetric: the zero point is 0
            total += weight.numel()
    linear = quantized.get_submodule("linear")
    assert type(linear) is nn.Linear
    zeros += int((linear.weight == 0).sum())
    total += linear.weight.numel()
    assert total == 848
    assert weight_sparsity(quantized) == zeros / 848 >= 424 / 848
