"""Model registry for the compression toolkit: CIFAR DenseNets plus the challenge baselines.

The DenseNet follows the widely used CIFAR layout (``conv1``, ``dense1``..``dense4``,
``trans1``..``trans3``, ``bn``, ``linear``) so that module names in skip lists such as
``trans3, dense1, dense2`` mean the same as in the common code. Variants are thin registered
functions over one private builder, so a name fully determines an architecture.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

ModelFn = TypeVar("ModelFn", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Register ``fn`` under its own name, so the name used on the command line is the code's.

    Every registered builder also takes ``seed``: given, the weights are initialised from that
    seed without touching the global random state, so a figure computed from random weights
    (which are now and then exactly zero) is the same on every run."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")

    @functools.wraps(fn)
    def build(*args: Any, seed: int | None = None, **kwargs: Any) -> nn.Module:
        if seed is None:
            return fn(*args, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fn(*args, **kwargs)

    _REGISTRY[name] = build
    return build  # type: ignore[return-value]


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` (e.g. ``num_classes``) go to its builder."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}"
        ) from None
    return fn(**kwargs)


class SeparableConv2d(nn.Module):
    """A depthwise 3x3 then a pointwise 1x1 (with ``groups``), no norm or activation between.

    It replaces a dense 3x3 one for one, so it keeps the dense conv's input/output contract and
    adds nothing else that would change the op count beyond the factorisation itself.
    """

    def __init__(self, in_planes: int, out_planes: int, groups: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_planes, in_planes, 3, padding=1, groups=in_planes, bias=False
        )
        self.pointwise = nn.Conv2d(in_planes, out_planes, 1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pointwise(self.depthwise(x))
        return out


@dataclass(frozen=True)
class ConvGroups:
    """Groups of each conv role in a dense layer: the bottleneck 1x1 (``conv1``), the plain 3x3
    (``conv2``) and the pointwise 1x1 of a depthwise-separable ``conv2`` (its depthwise 3x3 is
    always one group per channel). A count must divide its conv's input and output channels."""

    conv1x1: int = 1
    conv3x3: int = 1
    pointwise: int = 1


def conv_groups(
    groups: int = 1,
    *,
    groups_1x1: int | None = None,
    groups_3x3: int | None = None,
    groups_pointwise: int | None = None,
    bottleneck: bool = True,
    separable: bool = False,
) -> ConvGroups:
    """The per-role groups of a DenseNet: ``groups`` for every role unless a role's own count is
    given. A role's count for a conv the network does not have is refused (ValueError), so a
    setting never silently does nothing: ``groups_1x1`` needs ``bottleneck``, ``groups_3x3`` a
    plain 3x3 (not ``separable``), ``groups_pointwise`` a ``separable`` 3x3."""
    absent = {
        "groups_1x1": (groups_1x1, not bottleneck, "there is no bottleneck 1x1 conv "
                       "(bottleneck is false)"),
        "groups_3x3": (groups_3x3, separable, "the 3x3 conv is depthwise-separable (its "
                       "depthwise part has one group per channel; set groups_pointwise)"),
        "groups_pointwise": (groups_pointwise, not separable, "there is no pointwise conv "
                             "(separable is false)"),
    }
    for name, (value, missing, why) in absent.items():
        if value is not None and missing:
            raise ValueError(f"{name} has no conv to apply to: {why}")
    counts = ConvGroups(
        groups if groups_1x1 is None else groups_1x1,
        groups if groups_3x3 is None else groups_3x3,
        groups if groups_pointwise is None else groups_pointwise,
    )
    if min(counts.conv1x1, counts.conv3x3, counts.pointwise) < 1:
        raise ValueError(f"groups must be at least 1, got {counts}")
    return counts


def _conv3x3(in_planes: int, out_planes: int, groups: ConvGroups, separable: bool) -> nn.Module:
    if separable:
        return SeparableConv2d(in_planes, out_planes, groups.pointwise)
    return nn.Conv2d(in_planes, out_planes, 3, padding=1, groups=groups.conv3x3, bias=False)


class DenseLayer(nn.Module):
    """One dense layer: new features concatenated in front of the input (``cat([out, x])``).

    With ``bottleneck`` it is bn1-relu-conv1(1x1, 4*growth)-bn2-relu-conv2(3x3, growth), the
    DenseNet-BC layer; without, bn2-relu-conv2 only, so ``conv2`` is always the 3x3.
    """

    def __init__(
        self, in_planes: int, growth_rate: int, *, bottleneck: bool, groups: ConvGroups,
        separable: bool,
    ) -> None:
        super().__init__()
        self.bn1: nn.BatchNorm2d | None = None
        self.conv1: nn.Conv2d | None = None
        inner = in_planes
        if bottleneck:
            inner = 4 * growth_rate
            self.bn1 = nn.BatchNorm2d(in_planes)
            self.conv1 = nn.Conv2d(in_planes, inner, 1, groups=groups.conv1x1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = _conv3x3(inner, growth_rate, groups, separable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.bn1 is not None and self.conv1 is not None:
            out = self.conv1(F.relu(self.bn1(out)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """bn-relu-1x1 conv-2x2 average pool: compresses channels and halves the resolution."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """CIFAR DenseNet for 32x32 inputs: a 3x3 stem, four dense stages, three transitions.

    ``groups`` applies to every grouped conv role of the dense layers (the bottleneck 1x1 and
    the 3x3, or the pointwise part of a ``separable`` 3x3); ``groups_1x1``, ``groups_3x3`` and
    ``groups_pointwise`` set one role each (see `conv_groups`). The stem, transitions and
    classifier are never grouped.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        growth_rate: int,
        *,
        reduction: float = 0.5,
        bottleneck: bool = True,
        groups: int = 1,
        groups_1x1: int | None = None,
        groups_3x3: int | None = None,
        groups_pointwise: int | None = None,
        separable: bool = False,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"blocks needs four stage depths, got {tuple(blocks)}")
        roles = conv_groups(
            groups, groups_1x1=groups_1x1, groups_3x3=groups_3x3,
            groups_pointwise=groups_pointwise, bottleneck=bottleneck, separable=separable,
        )
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        stages: list[nn.Sequential] = []
        transitions: list[Transition] = []
        for index, depth in enumerate(blocks):
            layers = []
            for _ in range(depth):
                layers.append(
                    DenseLayer(
                        planes, growth_rate, bottleneck=bottleneck, groups=roles,
                        separable=separable,
                    )
                )
                planes += growth_rate
            stages.append(nn.Sequential(*layers))
            if index < 3:
                out_planes = math.floor(planes * reduction)
                transitions.append(Transition(planes, out_planes))
                planes = out_planes
        self.dense1, self.dense2, self.dense3, self.dense4 = stages
        self.trans1, self.trans2, self.trans3 = transitions
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = self.trans3(self.dense3(out))
        out = self.dense4(out)
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        logits: torch.Tensor = self.linear(out.flatten(1))
        return logits


@register_model
def densenet(
    growth_rate: int = 12, blocks: Sequence[int] = (6, 12, 24, 16), **kwargs: Any
) -> DenseNet:
    """Any CIFAR DenseNet: DenseNet-121's stage depths unless ``blocks`` says otherwise, and the
    `DenseNet` options (``reduction``, ``bottleneck``, ``groups`` and the per-role
    ``groups_1x1``, ``groups_3x3``, ``groups_pointwise``, ``separable``) by keyword."""
    return DenseNet(blocks, growth_rate, **kwargs)


@register_model
def densenet121_gr4(**kwargs: Any) -> DenseNet:
    return densenet(4, **kwargs)


@register_model
def densenet121_gr4_g2(**kwargs: Any) -> DenseNet:
    """Groups of 2 on both bottleneck convs: roughly halves their weights."""
    return densenet(4, groups=2, **kwargs)


@register_model
def densenet121_gr4_dws(**kwargs: Any) -> DenseNet:
    """Depthwise-separable 3x3 convs in every dense layer."""
    return densenet(4, separable=True, **kwargs)


@register_model
def densenet121_gr4_dws_g2(**kwargs: Any) -> DenseNet:
    """Depthwise-separable 3x3 convs, and groups of 2 on the bottleneck 1x1 only (the
    pointwise 1x1 of the separable conv stays whole)."""
    return densenet(4, separable=True, groups_1x1=2, **kwargs)


@register_model
def densenet121_gr8(**kwargs: Any) -> DenseNet:
    return densenet(8, **kwargs)


@register_model
def densenet121_gr12(**kwargs: Any) -> DenseNet:
    return densenet(12, **kwargs)


@register_model
def densenet121_gr32(**kwargs: Any) -> DenseNet:
    return densenet(32, **kwargs)


class BasicBlock(nn.Module):
    """Post-activation residual block of the CIFAR ResNet-18 (projection shortcut on change)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (3x3 stem, no max pool, 4x4 average pool), the challenge's CIFAR-10 baseline."""

    def __init__(self, blocks: Sequence[int], num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages: list[nn.Sequential] = []
        for planes, stride, depth in zip((64, 128, 256, 512), (1, 2, 2, 2), blocks, strict=True):
            layers = [BasicBlock(in_planes, planes, stride)]
            layers += [BasicBlock(planes, planes) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        logits: torch.Tensor = self.linear(out.flatten(1))
        return logits


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    return ResNet((2, 2, 2, 2), **kwargs)


class WideBlock(nn.Module):
    """Pre-activation wide block; the 1x1 shortcut reads relu(bn1(x)), as in the reference code."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.dropout = nn.Dropout(drop_rate)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out: torch.Tensor = self.dropout(self.conv1(activated))
        out = self.conv2(F.relu(self.bn2(out)))
        shortcut: torch.Tensor = x if self.shortcut is None else self.shortcut(activated)
        return out + shortcut


class WideResNet(nn.Module):
    """WideResNet-depth-widen for CIFAR, the challenge's CIFAR-100 baseline."""

    def __init__(
        self, depth: int, widen: int, *, drop_rate: float = 0.0, num_classes: int = 100
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        per_stage = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        in_planes = widths[0]
        stages: list[nn.Sequential] = []
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            layers = [WideBlock(in_planes, planes, stride, drop_rate)]
            layers += [WideBlock(planes, planes, 1, drop_rate) for _ in range(per_stage - 1)]
            stages.append(nn.Sequential(*layers))
            in_planes = planes
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits: torch.Tensor = self.linear(out)
        return logits


@register_model
def wrn28_10(**kwargs: Any) -> WideResNet:
    return WideResNet(28, 10, **kwargs)
