"""The IMT Atlantique course's rule sets, each convention derived by hand from its arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import layer, resnet18
from torch import nn

from micronet_score import score_model
from micronet_score.results import Report


def ones(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    return model.eval()


def imt(model: nn.Module, *shape: int, rules: str = "imt-2022", **kwargs: object) -> Report:
    return score_model(ones(model), input_shape=shape, rules=rules, **kwargs)  # type: ignore[arg-type]


def test_resnet18_reproduces_the_course_figures() -> None:
    report = score_model(resnet18(), rules="imt-2022")
    assert report.params == 5_586_981  # every parameter, BatchNorm's included, at 16 bits
    assert report.ops == 834_362_870  # the course file prints ...880 (float32 accumulation)
    assert report.baseline.name == "resnet18-imt"
    assert report.score == pytest.approx(2.000, abs=1e-6)


def test_resnet18_under_imt_2024() -> None:
    half = score_model(resnet18().half(), rules="imt-2024")
    declared = score_model(resnet18(), rules="imt-2024", bits=["*=16/16"])
    full = score_model(resnet18(), rules="imt-2024")
    assert half.baseline.name == "resnet18-imt-2024"
    assert half.score == pytest.approx(2.0, rel=0.02)
    assert declared.score == half.score
    assert full.score == pytest.approx(4.0, rel=0.02)
    # w = conv + linear weights, f = their MACs.
    assert full.params == 11_164_352
    assert full.ops == 555_422_720


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_grouped_conv_divides_the_whole_sum_by_groups() -> None:
    # n_full = 3*3*4 = 36; per output (36/2 + 35) / 2 = 26.5; 150 outputs.
    report = imt(Wrapped(nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)), 4, 5, 5)
    assert report.ops == 26.5 * 150
    assert report.params == 108 / 2


def test_conv_bias_adds_one_unscaled_op_per_output() -> None:
    report = imt(Wrapped(nn.Conv2d(4, 6, 3, padding=1, groups=2)), 4, 5, 5)
    assert report.ops == 27.5 * 150
    assert report.params == 114 / 2


def test_linear_has_no_bias_add() -> None:
    # per output 5/2 + 4 = 6.5, 4 outputs; 24 parameters at 16 bits.
    report = imt(Wrapped(nn.Linear(5, 4)), 5)
    assert report.ops == 26
    assert report.params == 12


def test_batch_norm_three_unscaled_ops_and_relu_module_versus_function() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.bn(self.relu(x)))

    report = imt(Net(), 3, 4, 4)
    assert layer(report, "bn").effective_ops == 3 * 48
    assert layer(report, "relu").effective_ops == 48  # the module; F.relu is invisible
    assert [row.name for row in report.layers] == ["relu", "bn"]
    assert report.params == 6 / 2


def test_avg_pool_module_costs_k_per_output_and_functions_nothing() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AvgPool2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(self.pool(x), 2) + torch.cat([x, x], 1).mean()

    report = imt(Net(), 3, 4, 4)
    assert report.ops == 12 * 2
    assert report.uncounted == ()


def test_sparsity_scales_the_whole_parameter_part() -> None:
    model = ones(Wrapped(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(3))))
    with torch.no_grad():
        model.inner[0].weight[:, :, :, 1:] = 0  # 36 of the 54 conv weights are zero
    report = score_model(model, input_shape=(2, 4, 4), rules="imt-2022")
    density = 18 / 54
    assert report.params == pytest.approx((54 + 6) / 2 * density)
    dense = imt(Wrapped(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(3))), 2, 4, 4)
    assert report.ops == dense.ops  # zero weights do not reduce the course's ops


def test_per_module_quantization_factors_from_declarations() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(8, 4, bias=False)
            self.f = nn.Linear(4, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.f(self.q(x))

    report = imt(Net(), 8, bits=["q=8/8"])
    # q: factor 4: 8/4 + 7 per output, 4 outputs, 32/4 params; f: factor 2: 4/2 + 3, 2 outputs.
    assert layer(report, "q").effective_ops == 4 * (8 / 4 + 7)
    assert layer(report, "f").effective_ops == 2 * (4 / 2 + 3)
    assert report.params == 32 / 4 + 8 / 2


def test_imt_2024_filter_and_other_zeros() -> None:
    model = ones(Wrapped(nn.Conv2d(2, 3, 3, padding=1, bias=False)))
    with torch.no_grad():
        model.inner.weight[0] = 0  # a whole filter: p_s = 18/54
        model.inner.weight[1, 0] = 0  # 9 more zeros: p_u = 9/54
    report = score_model(model, input_shape=(2, 4, 4), rules="imt-2024")
    assert report.params == pytest.approx((1 - 27 / 54) * 54)
    assert report.ops == pytest.approx((1 - 18 / 54) * 864)  # 864 dense MACs
    assert report.score == pytest.approx(27 / 5.6e6 + 576 / 2.8e8)


def test_same_model_under_micronet_and_imt_2022_differs_only_as_documented() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.bn(self.conv(x)))

    model = ones(Net())
    official = score_model(model, input_shape=(2, 4, 4), baseline="resnet18-imt")
    course = score_model(model, input_shape=(2, 4, 4), rules="imt-2022")
    # micronet: BN folds (conv gains 3 bias values and 48 adds), F.relu costs 1 mult per element,
    # freebie halves params and mults: params (54 + 3)/2, ops 864/2 + (816 + 48) + 48/2.
    assert (official.params, official.ops) == (57 / 2, 864 / 2 + 864 + 24)
    # imt-2022: BN does not fold (3 ops per element, 2 parameters per channel), F.relu is
    # invisible, everything at the 16-bit base: params (54 + 6)/2, ops 864/2 + 816 + 3*48.
    assert (course.params, course.ops) == (60 / 2, 864 / 2 + 816 + 144)
