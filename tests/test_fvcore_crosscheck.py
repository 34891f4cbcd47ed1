"""Independent cross-check: dense fp32 conv+linear multiplications equal fvcore's MAC counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from fvcore.nn import FlopCountAnalysis
from helpers import without_zeros
from torch import nn

from micronet_score import score_model


def fvcore_conv_linear(model: nn.Module, shape: tuple[int, ...]) -> int:
    analysis = FlopCountAnalysis(model, torch.zeros(1, *shape))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_operator = analysis.by_operator()
    return sum(by_operator.get(name, 0) for name in ("conv", "linear", "addmm"))


def our_conv_linear(model: nn.Module, shape: tuple[int, ...]) -> float:
    report = score_model(model, input_shape=shape, freebie=False)
    return sum(layer.mults for layer in report.layers if layer.op in ("conv", "linear"))


def cifar_densenet() -> nn.Module:
    from micronet_score.compress.models import create_model

    return create_model("densenet121_gr4")


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (torchvision.models.resnet18, (3, 224, 224)),
        (torchvision.models.mobilenet_v2, (3, 224, 224)),
        (torchvision.models.densenet121, (3, 224, 224)),
        (cifar_densenet, (3, 32, 32)),
    ],
    ids=["resnet18", "mobilenet_v2", "densenet121", "cifar_densenet_gr4"],
)
def test_conv_and_linear_mults_equal_fvcore(
    build: Callable[[], nn.Module], shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = without_zeros(build())
    ours = our_conv_linear(model, shape)
    assert ours == fvcore_conv_linear(model, shape)
