"""Hand-derived counts for every op kind of the micronet rules, in module, functional and aten form.

Weights are filled with ones (no zeros) unless a test is about zeros; no freebie, so 32-bit
counts equal raw counts.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import layer, layers_of, without_zeros
from torch import nn

from micronet_score import score_model
from micronet_score.results import Report


def ones(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    return model.eval()


def score(model: nn.Module, *shape: int, exported: bool = False) -> Report:
    model = ones(model)
    if exported:
        program = torch.export.export(model, (torch.zeros(1, *shape),))
        return score_model(program, freebie=False)
    return score_model(model, input_shape=shape, freebie=False)


class Lambda(nn.Module):
    """Wraps a functional expression so that it can be traced as a model."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


@pytest.mark.parametrize("exported", [False, True])
def test_conv_without_bias(exported: bool) -> None:
    # 3 filters of 2x3x3 = 18 weights, 4x4 outputs each: 48 dot products of length 18.
    report = score(nn.Conv2d(2, 3, 3, padding=1, bias=False), 2, 4, 4, exported=exported)
    (conv,) = layers_of(report, "conv")
    assert (conv.mults, conv.adds, conv.params) == (18 * 48, 17 * 48, 54)
    assert report.ops == 18 * 48 + 17 * 48
    assert report.params == 54


@pytest.mark.parametrize("exported", [False, True])
def test_conv_with_bias_adds_one_per_output(exported: bool) -> None:
    report = score(nn.Conv2d(2, 3, 3, padding=1), 2, 4, 4, exported=exported)
    (conv,) = layers_of(report, "conv")
    assert (conv.mults, conv.adds, conv.params) == (18 * 48, 18 * 48, 57)


def test_grouped_conv_counts_per_group() -> None:
    # groups=2: each of 6 filters sees 2 of the 4 channels: n = 2*9 = 18, 6*5*5 = 150 outputs.
    report = score(nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False), 4, 5, 5)
    (conv,) = layers_of(report, "conv")
    assert (conv.mults, conv.adds, conv.params) == (2700, 2550, 108)


def test_depthwise_conv() -> None:
    report = score(nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False), 3, 4, 4)
    (conv,) = layers_of(report, "conv")
    assert (conv.mults, conv.adds, conv.params) == (9 * 48, 8 * 48, 27)


def test_functional_conv_matches_module() -> None:
    weight = nn.Parameter(torch.ones(3, 2, 3, 3))

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight, None, 1, 1)

    report = score(Functional(), 2, 4, 4)
    (conv,) = layers_of(report, "conv")
    assert (conv.mults, conv.adds, conv.params) == (18 * 48, 17 * 48, 54)
    assert report.params == 54  # the weight is charged once, by the conv, not again as a tensor


def test_transposed_conv() -> None:
    # 24 weights each meet the 3x3 input positions: 216 products summed into 3*6*6 = 108 outputs.
    report = score(nn.ConvTranspose2d(2, 3, 2, stride=2, bias=False), 2, 3, 3)
    (conv,) = layers_of(report, "conv_transpose")
    assert (conv.mults, conv.adds, conv.params) == (216, 108, 24)


@pytest.mark.parametrize("exported", [False, True])
def test_linear_on_nd_input_counts_every_row(exported: bool) -> None:
    # 7 rows, each 4 outputs of length-5 dot products plus a bias add.
    report = score(nn.Linear(5, 4), 7, 5, exported=exported)
    (linear,) = layers_of(report, "linear")
    assert (linear.mults, linear.adds, linear.params) == (140, 4 * 4 * 7 + 4 * 7, 24)


@pytest.mark.parametrize("exported", [False, True])
def test_batch_norm_after_conv_folds_into_its_bias(exported: bool) -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3))
    report = score(model, 2, 4, 4, exported=exported)
    (conv,) = layers_of(report, "conv")
    (bn,) = layers_of(report, "batch_norm")
    assert (conv.mults, conv.adds, conv.params) == (864, 864, 57)
    assert (bn.mults, bn.adds, bn.params) == (0, 0, 0)
    assert bn.note == f"folded into {conv.module}"
    assert report.params == 57


def test_batch_norm_folds_into_existing_bias_without_charging_twice() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))
    report = score(model, 2, 4, 4)
    assert report.params == 57
    assert report.ops == 864 + 864


@pytest.mark.parametrize("exported", [False, True])
def test_batch_norm_after_activation_is_scale_and_shift(exported: bool) -> None:
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3))
    report = score(model, 3, 4, 4, exported=exported)
    (bn,) = layers_of(report, "batch_norm")
    assert (bn.mults, bn.adds, bn.params) == (48, 48, 6)


def test_batch_norm_does_not_fold_into_a_conv_with_other_users() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1, bias=False)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    report = score(Residual(), 3, 4, 4)
    assert (layer(report, "bn").mults, layer(report, "bn").params) == (48, 6)
    assert layer(report, "conv").adds == 2 * 48  # no folded bias


def test_batch_norm_after_cat_is_not_folded() -> None:
    class Dense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(torch.cat([self.conv(x), x], 1))

    report = score(Dense(), 2, 3, 3)
    assert (layer(report, "bn").mults, layer(report, "bn").adds) == (36, 36)
    assert layer(report, "bn").params == 8


@pytest.mark.parametrize(
    ("activation", "mults", "adds"),
    [
        (nn.ReLU(), 1, 0),
        (Lambda(F.relu), 1, 0),
        (Lambda(torch.relu), 1, 0),
        (Lambda(lambda x: x.relu()), 1, 0),
        (nn.ReLU6(), 2, 0),
        (nn.Hardtanh(), 2, 0),
        (nn.Sigmoid(), 2, 1),
        (nn.SiLU(), 3, 1),
        (Lambda(F.silu), 3, 1),
        (nn.Hardswish(), 4, 1),
        (nn.GELU(), 4, 1),
        (nn.Softmax(dim=-1), 2, 1),
    ],
)
def test_activations_cost_per_element(activation: nn.Module, mults: int, adds: int) -> None:
    report = score(activation, 3, 4, 4)
    (row,) = report.layers
    assert (row.mults, row.adds) == (48 * mults, 48 * adds)


@pytest.mark.parametrize("exported", [False, True])
def test_relu_module_and_function_count_the_same(exported: bool) -> None:
    module = score(nn.ReLU(), 3, 4, 4, exported=exported)
    function = score(Lambda(F.relu), 3, 4, 4, exported=exported)
    assert module.ops == function.ops == 48


@pytest.mark.parametrize(
    "pool", [nn.AvgPool2d(2), Lambda(lambda x: F.avg_pool2d(x, 2))], ids=["module", "function"]
)
@pytest.mark.parametrize("exported", [False, True])
def test_average_pool(pool: nn.Module, exported: bool) -> None:
    # 3x2x2 = 12 outputs, each one division and 3 adds over its 2x2 window.
    report = score(pool, 3, 4, 4, exported=exported)
    (row,) = report.layers
    assert (row.mults, row.adds) == (12, 36)


def test_max_pool_counts_comparisons_as_adds() -> None:
    report = score(nn.MaxPool2d(2), 3, 4, 4)
    (row,) = report.layers
    assert (row.mults, row.adds) == (0, 36)


@pytest.mark.parametrize("exported", [False, True])
def test_global_average_pool(exported: bool) -> None:
    report = score(nn.AdaptiveAvgPool2d(1), 3, 4, 4, exported=exported)
    (row,) = report.layers
    assert (row.mults, row.adds) == (3, 45)


def test_adaptive_pool_with_uneven_windows() -> None:
    # 5 -> 3 along each side: windows [0,2), [1,4), [3,5) of lengths 2, 3, 2 = 7 per side;
    # 49 values summed into 9 outputs per channel: 40 adds per channel.
    report = score(nn.AdaptiveAvgPool2d(3), 2, 5, 5)
    (row,) = report.layers
    assert (row.mults, row.adds) == (18, 80)


def test_mean_over_spatial_dims() -> None:
    report = score(Lambda(lambda x: x.mean([2, 3])), 3, 4, 4)
    (row,) = report.layers
    assert (row.mults, row.adds) == (3, 45)


@pytest.mark.parametrize(
    ("function", "mults", "adds"),
    [
        (lambda x: x + x, 0, 48),
        (lambda x: torch.add(x, x), 0, 48),
        (lambda x: x - 1.0, 0, 48),
        (lambda x: x * 2.0, 48, 0),
        (lambda x: x / 2.0, 48, 0),
        (lambda x: torch.mul(x, x), 48, 0),
    ],
)
def test_elementwise_arithmetic(function: Callable[[torch.Tensor], torch.Tensor],
                                mults: int, adds: int) -> None:
    report = score(Lambda(function), 3, 4, 4)
    (row,) = report.layers
    assert (row.mults, row.adds) == (mults, adds)


def test_data_movement_is_free_and_not_uncounted() -> None:
    def move(x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, x], 1).view(1, -1)
        return torch.flatten(y.reshape(2, -1).permute(1, 0).contiguous(), 0)

    report = score(nn.Sequential(nn.Dropout(), nn.Identity(), Lambda(move)), 3, 4, 4)
    assert report.layers == ()
    assert report.uncounted == ()
    assert report.ops == 0


def test_module_called_twice_counts_ops_twice_and_params_once() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))

    report = score(Twice(), 2, 3, 3)
    # each call: 18 outputs, dot products of length 2: 36 mults, 18 adds.
    assert report.ops == 2 * (36 + 18)
    assert report.params == 4
    assert [row.params for row in layers_of(report, "conv")] == [4, 0]


def test_matmul_between_activations() -> None:
    # (4x6) @ (6x4): 16 outputs, dot products of length 6.
    report = score(Lambda(lambda x: x @ x.transpose(1, 2)), 4, 6)
    (row,) = report.layers
    assert (row.mults, row.adds) == (96, 80)


def test_layer_norm() -> None:
    # 4 rows of 6: per element 2 mults + 3 adds, per row 3 mults + 1 add, affine 1 + 1 each.
    report = score(nn.LayerNorm(6), 4, 6)
    (row,) = report.layers
    assert (row.mults, row.adds, row.params) == (2 * 24 + 3 * 4 + 24, 3 * 24 + 4 + 24, 12)


def test_scaled_dot_product_attention() -> None:
    # batch*heads = 2, 4 queries and keys of depth 8: 32 scores. The scale 1/sqrt(8) multiplies
    # each query element once (2 x 4 x 8), as q * scale before q·kᵀ.
    report = score(Lambda(lambda x: F.scaled_dot_product_attention(x, x, x)), 2, 4, 8)
    (row,) = report.layers
    qk, scale, softmax_mults, av = 32 * 8, 2 * 4 * 8, 2 * 32, 2 * 4 * 8 * 4
    assert row.mults == qk + scale + softmax_mults + av
    assert row.adds == 32 * 7 + 32 + 2 * 4 * 8 * 3


def test_unknown_op_is_listed_not_guessed() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Lambda(lambda x: torch.special.bessel_j0(x))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.inner(x))

    report = score(Odd(), 3, 4)
    (missing,) = report.uncounted
    assert missing.target == "special_bessel_j0"
    assert missing.module == "inner"
    assert report.ops == 12  # only the relu


def test_stored_tensor_read_directly_is_a_parameter() -> None:
    class Token(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.offset = nn.Parameter(torch.ones(1, 3, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.offset

    report = score(Token(), 3, 4)
    assert report.params == 12
    assert layer(report, "offset").op == "parameter"
    assert report.ops == 12


def test_a_forward_that_updates_its_own_buffer_counts_its_layers() -> None:
    """`self.n += 1` on a buffer leaves a node after the graph's output; it never runs at
    inference and must not break the count (it ended in an internal AssertionError)."""

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("n", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.n += 1
            out: torch.Tensor = self.fc(x)
            return out

    model = without_zeros(Counting())
    report = score_model(model, input_shape=(4,), freebie=False)
    assert (report.params, report.mults, report.adds) == (16 + 4, 16, 12 + 4)
    assert float(model.n) == 0.0  # the model's own buffer is untouched
