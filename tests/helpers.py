"""Shared test helpers: look up layers in a report by name or op."""

from __future__ import annotations

import torch
from torch import nn

from micronet_score.compress.models import create_model
from micronet_score.results import Layer, Report


def layer(report: Report, name: str) -> Layer:
    for candidate in report.layers:
        if candidate.name == name:
            return candidate
    raise AssertionError(f"no layer {name!r}; have {[c.name for c in report.layers]}")


def layers_of(report: Report, op: str) -> list[Layer]:
    return [candidate for candidate in report.layers if candidate.op == op]


def without_zeros(model: nn.Module) -> nn.Module:
    """Random init can produce exact zeros, which the counter rightly skips; reference figures
    are for dense models, so give every parameter a non-zero value."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.9 + 0.1)
    return model.eval()


def resnet18() -> nn.Module:
    """The CIFAR ResNet-18 of the reference figures (3x3 stem, BasicBlocks, functional relu,
    4x4 average pool), with no zero weights."""
    return without_zeros(create_model("resnet18"))


def wide_resnet_28_10() -> nn.Module:
    """WideResNet-28-10, 100 classes, pre-activation, 1x1 shortcut reading relu(bn1(x))."""
    return without_zeros(create_model("wrn28_10"))
