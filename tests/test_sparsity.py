"""Zero weights: skipped ops per output channel, cheapest storage, pruning masks, no mutation."""

from __future__ import annotations

import pytest
import torch
from helpers import layers_of
from torch import nn
from torch.nn.utils import parametrize, prune

from micronet_score import score_model
from micronet_score.results import Layer


def conv_with_zeros(zero: tuple[slice | int, ...]) -> nn.Conv2d:
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[zero] = 0.0
    return conv.eval()


def only_conv(model: nn.Module) -> Layer:
    # Wrapped, as a layer is always part of a model: the root itself is traced through.
    wrapped = nn.Sequential(model)
    (conv,) = layers_of(score_model(wrapped, input_shape=(2, 4, 4), freebie=False), "conv")
    return conv


def test_plain_zeros_are_skipped_per_output_channel() -> None:
    # Filter 0 keeps 9 of its 18 weights: 45 non-zeros, 16 output positions per filter.
    conv = only_conv(conv_with_zeros((0, 0)))
    assert conv.mults == 45 * 16
    assert conv.adds == (8 + 17 + 17) * 16
    assert conv.sparsity == pytest.approx(9 / 54)
    # dense 54*32 = 1728 bits; sparse 45*32 + 54 mask bits = 1494; a whole kernel is zero too:
    # 5 kernels * 9 * 32 + 6 mask bits = 1446 is the cheapest.
    assert conv.storage_format == "kernel_mask"
    assert conv.storage_bits == 1446


def test_all_zero_output_channel_costs_no_adds() -> None:
    conv = only_conv(conv_with_zeros((0,)))
    assert conv.mults == 36 * 16
    assert conv.adds == (0 + 17 + 17) * 16  # not -1 for the empty filter
    # dense 1728; sparse 36*32 + 54 = 1206; kernels 4*9*32 + 6 = 1158; filters 2*18*32 + 3 = 1155.
    assert conv.storage_format == "filter_mask"
    assert conv.storage_bits == 1155


def test_scattered_zeros_use_an_element_mask() -> None:
    conv = conv_with_zeros((slice(None), slice(None), 0, 0))  # one weight per kernel: 6 zeros
    layer = only_conv(conv)
    # dense 1728; sparse 48*32 + 54 = 1590; no empty kernel or filter.
    assert (layer.storage_format, layer.storage_bits) == ("sparse", 1590)
    assert layer.mults == 48 * 16


def test_dense_storage_when_a_mask_costs_more_than_it_saves() -> None:
    conv = conv_with_zeros((0, 0, 0, 0))  # one zero: sparse 53*32 + 54 = 1750 > 1728
    layer = only_conv(conv)
    assert (layer.storage_format, layer.storage_bits) == ("dense", 1728)
    assert layer.mults == 53 * 16


def filter_zero_mask() -> torch.Tensor:
    mask = torch.ones(3, 2, 3, 3)
    mask[0] = 0
    return mask


def ones_conv() -> nn.Conv2d:
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return conv.eval()


def test_pruning_mask_before_and_after_remove() -> None:
    conv = ones_conv()
    prune.custom_from_mask(conv, "weight", filter_zero_mask())
    before = only_conv(conv)
    prune.remove(conv, "weight")
    after = only_conv(conv)
    expected = only_conv(conv_with_zeros((0,)))
    for layer in (before, after):
        assert (layer.mults, layer.adds, layer.storage_bits) == (
            expected.mults, expected.adds, expected.storage_bits,
        )


def test_pruning_mask_is_read_from_orig_and_mask_even_if_weight_is_stale() -> None:
    conv = ones_conv()
    prune.custom_from_mask(conv, "weight", torch.ones(3, 2, 3, 3))
    with torch.no_grad():
        conv.weight_mask[0] = 0  # the forward pre-hook has not recomputed `weight` yet
    assert only_conv(conv).mults == 36 * 16


def test_parametrized_weight_is_counted_with_its_zeros() -> None:
    class Masked(nn.Module):
        def __init__(self, mask: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return weight * self.mask

    conv = ones_conv()
    parametrize.register_parametrization(conv, "weight", Masked(filter_zero_mask()))
    layer = only_conv(conv)
    assert (layer.mults, layer.adds) == (36 * 16, 34 * 16)


def test_scoring_leaves_a_pruned_model_untouched() -> None:
    model = nn.Sequential(ones_conv(), nn.BatchNorm2d(3), nn.ReLU()).train()
    prune.custom_from_mask(model[0], "weight", filter_zero_mask())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = [id(p) for p in model.parameters()]
    hooks = dict(model[0]._forward_pre_hooks)
    report = score_model(model, input_shape=(2, 4, 4))
    assert "training mode" in " ".join(report.warnings)
    assert model.training
    assert [id(p) for p in model.parameters()] == parameters
    assert dict(model[0]._forward_pre_hooks) == hooks
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_linear_with_zero_rows() -> None:
    linear = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]))
    report = score_model(nn.Sequential(linear), input_shape=(4,), freebie=False)
    (row,) = report.layers
    assert (row.mults, row.adds) == (5, 0 + 3 + 0)


def test_weight_computed_in_forward_counts_dense_ops_and_charges_its_source() -> None:
    conv = ones_conv()
    parametrize.register_parametrization(conv, "weight", nn.Identity())
    # The root is traced through: the conv's weight is computed, so it is counted dense, and
    # the stored original is charged where the graph reads it.
    report = score_model(conv, input_shape=(2, 4, 4), freebie=False)
    assert report.ops == 864 + 816
    assert report.params == 54
