"""Exact parameter counts for every registered model, and the layout the skip lists rely on."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

from micronet_score.compress.models import (
    DenseLayer,
    DenseNet,
    SeparableConv2d,
    WideResNet,
    create_model,
    densenet121_gr4,
    densenet121_gr4_dws,
    densenet121_gr4_g2,
    list_models,
    register_model,
)

# DenseNet-121 at growth 4, by hand. The stem makes 8 channels (3*8*9 = 216 weights); each
# stage adds depth*4 channels and each transition halves them, so the head sees 128 channels.
# A dense layer on c input channels holds bn1 (2c), the bottleneck 1x1 c->16 (16c / g1), bn2
# (32) and the 3x3 16->4 (576 / g3), or, separable, a depthwise 3x3 (16*9 = 144) and a
# pointwise 16->4 (64 / gp). Its inputs c run 8, 12, .., 28 in dense1 (sum 108), 16 .. 60 in
# dense2 (456), 32 .. 124 in dense3 (1,872) and 64 .. 124 in dense4 (1,504): S = 3,940 over
# the 58 layers. Transitions 32->16, 64->32, 128->64 hold bn + 1x1: 576 + 2,176 + 8,448 =
# 11,200; the final bn 256 and the linear 128*10 + 10 = 1,290. Outside the dense layers:
# 216 + 11,200 + 256 + 1,290 = 12,962.
#   gr4:       18*S + 58*(32 + 576)        = 70,920 + 35,264 = 106,184 -> 119,146
#   gr4_g2:    10*S + 58*(32 + 288)        = 39,400 + 18,560 =  57,960 ->  70,922
#   gr4_dws:   18*S + 58*(32 + 144 + 64)   = 70,920 + 13,920 =  84,840 ->  97,802
#   gr4_dws_g2 (groups 2 on the 1x1 only):
#              10*S + 58*(32 + 144 + 64)   = 39,400 + 13,920 =  53,320 ->  66,282
OUTSIDE_DENSE_LAYERS = 216 + 11_200 + 256 + 1_290
S = 108 + 456 + 1_872 + 1_504
PARAM_COUNTS = {
    "densenet": 1_000_618,  # growth rate 12 unless told
    "densenet121_gr4": 119_146,
    "densenet121_gr4_g2": 70_922,
    "densenet121_gr4_dws": 97_802,
    "densenet121_gr4_dws_g2": 66_282,
    "densenet121_gr8": 452_682,
    "densenet121_gr12": 1_000_618,
    "densenet121_gr32": 6_956_298,
    "resnet18": 11_173_962,
    "wrn28_10": 36_536_884,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_registered_model_has_a_count() -> None:
    assert sorted(PARAM_COUNTS) == list_models()


@pytest.mark.parametrize(("name", "count"), PARAM_COUNTS.items())
def test_parameter_count(name: str, count: int) -> None:
    assert n_params(create_model(name)) == count


def test_the_hand_counts_add_up() -> None:
    assert PARAM_COUNTS["densenet121_gr4"] == OUTSIDE_DENSE_LAYERS + 18 * S + 58 * (32 + 576)
    assert PARAM_COUNTS["densenet121_gr4_g2"] == OUTSIDE_DENSE_LAYERS + 10 * S + 58 * (32 + 288)
    assert PARAM_COUNTS["densenet121_gr4_dws"] == OUTSIDE_DENSE_LAYERS + 18 * S + 58 * 240
    assert PARAM_COUNTS["densenet121_gr4_dws_g2"] == OUTSIDE_DENSE_LAYERS + 10 * S + 58 * 240


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"growth_rate": 4}, "densenet121_gr4"),
        ({"growth_rate": 4, "groups": 2}, "densenet121_gr4_g2"),
        ({"growth_rate": 4, "groups_1x1": 2, "groups_3x3": 2}, "densenet121_gr4_g2"),
        ({"growth_rate": 4, "separable": True}, "densenet121_gr4_dws"),
        ({"growth_rate": 4, "separable": True, "groups_1x1": 2}, "densenet121_gr4_dws_g2"),
        ({"growth_rate": 4, "separable": True, "groups": 2, "groups_pointwise": 1},
         "densenet121_gr4_dws_g2"),
        ({"growth_rate": 32}, "densenet121_gr32"),
    ],
)
def test_the_generic_densenet_builds_the_named_variants(kwargs: dict[str, Any], name: str) -> None:
    assert n_params(create_model("densenet", **kwargs)) == PARAM_COUNTS[name]


def test_the_generic_densenet_takes_its_stage_depths() -> None:
    # The by-hand count of test_densenet_without_bottleneck_by_hand, through the registry.
    model = create_model("densenet", growth_rate=4, blocks=(1, 1, 1, 1), bottleneck=False)
    assert n_params(model) == 216 + 304 + 96 + 228 + 70 + 190 + 54 + 152 + 16 + 90


def test_num_classes_resizes_only_the_head() -> None:
    # 128 features: the head grows from 128*10 + 10 = 1,290 to 128*100 + 100 = 12,900.
    assert n_params(create_model("densenet121_gr4", num_classes=100)) == 119_146 - 1_290 + 12_900


def test_densenet_without_bottleneck_by_hand() -> None:
    # growth 4, one layer per stage; a plain layer on c channels is bn (2c) + 3x3 c->4 (36c).
    # stem 3*8*9 = 216; dense1 on 8: 304 -> 12 ch; trans1 bn 24 + 12*6 = 96 -> 6 ch;
    # dense2 on 6: 228 -> 10; trans2 20 + 50 = 70 -> 5; dense3 on 5: 190 -> 9;
    # trans3 18 + 9*4 = 54 (floor(4.5) = 4) -> 4; dense4 on 4: 152 -> 8; bn 16; linear 90.
    model = DenseNet((1, 1, 1, 1), 4, bottleneck=False)
    assert n_params(model) == 216 + 304 + 96 + 228 + 70 + 190 + 54 + 152 + 16 + 90
    layer = model.dense1[0]
    assert isinstance(layer, DenseLayer)
    assert layer.conv1 is None
    assert isinstance(layer.conv2, nn.Conv2d)
    assert layer.conv2.kernel_size == (3, 3)


def test_densenet_module_names_match_the_common_layout() -> None:
    model = densenet121_gr4()
    assert [name for name, _ in model.named_children()] == [
        "conv1", "dense1", "dense2", "dense3", "dense4", "trans1", "trans2", "trans3", "bn",
        "linear",
    ]
    stages = (model.dense1, model.dense2, model.dense3, model.dense4)
    assert [len(stage) for stage in stages] == [6, 12, 24, 16]
    assert [name for name, _ in model.dense1[0].named_children()] == [
        "bn1", "conv1", "bn2", "conv2",
    ]


def test_groups_and_separable_convs() -> None:
    grouped = densenet121_gr4_g2().dense2[3]
    assert isinstance(grouped, DenseLayer)
    assert isinstance(grouped.conv1, nn.Conv2d)
    assert isinstance(grouped.conv2, nn.Conv2d)
    assert (grouped.conv1.groups, grouped.conv2.groups) == (2, 2)
    separable_layer = densenet121_gr4_dws().dense2[3]
    assert isinstance(separable_layer, DenseLayer)
    separable = separable_layer.conv2
    assert isinstance(separable, SeparableConv2d)
    assert separable.depthwise.groups == 16
    assert separable.depthwise.weight.shape == (16, 1, 3, 3)
    assert separable.pointwise.weight.shape == (4, 16, 1, 1)


@pytest.mark.parametrize("name", ["densenet121_gr4", "densenet121_gr4_g2", "densenet121_gr4_dws"])
def test_densenet_forward_shape(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize(
    ("kwargs", "count"),
    [
        # Groups 2 on the 3x3 alone: 18*S + 58*(32 + 288).
        ({"groups_3x3": 2}, OUTSIDE_DENSE_LAYERS + 18 * S + 58 * (32 + 288)),
        # Groups 2 on the 1x1 alone: 10*S + 58*(32 + 576).
        ({"groups_1x1": 2}, OUTSIDE_DENSE_LAYERS + 10 * S + 58 * (32 + 576)),
        # Separable, groups 2 on both 1x1 convs (today's `groups` with `separable`): the
        # pointwise 16->4 holds 32.
        ({"separable": True, "groups": 2}, OUTSIDE_DENSE_LAYERS + 10 * S + 58 * (32 + 144 + 32)),
        # Separable, groups 4 on the pointwise alone: 16.
        ({"separable": True, "groups_pointwise": 4},
         OUTSIDE_DENSE_LAYERS + 18 * S + 58 * (32 + 144 + 16)),
    ],
)
def test_groups_per_conv_role(kwargs: dict[str, Any], count: int) -> None:
    model = create_model("densenet", growth_rate=4, **kwargs)
    assert n_params(model) == count


def test_the_depthwise_separable_g2_variant_groups_the_first_conv_only() -> None:
    layer = create_model("densenet121_gr4_dws_g2").get_submodule("dense3.5")
    assert isinstance(layer, DenseLayer)
    assert isinstance(layer.conv1, nn.Conv2d)
    assert isinstance(layer.conv2, SeparableConv2d)
    assert (layer.conv1.groups, layer.conv2.depthwise.groups, layer.conv2.pointwise.groups) == (
        2, 16, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups_3x3": 2, "separable": True}, "groups_3x3 has no conv to apply to: the 3x3 conv "
         "is depthwise-separable"),
        ({"groups_pointwise": 2}, "groups_pointwise has no conv to apply to: there is no "
         "pointwise conv (separable is false)"),
        ({"groups_1x1": 2, "bottleneck": False}, "groups_1x1 has no conv to apply to: there is "
         "no bottleneck 1x1 conv"),
        ({"groups_1x1": 0}, "groups must be at least 1"),
        ({"groups_1x1": 3}, "in_channels must be divisible by groups"),  # 8 channels in dense1
    ],
)
def test_groups_for_a_missing_or_impossible_conv_are_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("densenet", growth_rate=4, **kwargs)


def test_wide_resnet_options() -> None:
    assert n_params(create_model("wrn28_10", drop_rate=0.3)) == PARAM_COUNTS["wrn28_10"]
    with pytest.raises(ValueError, match=r"6n\+4"):
        WideResNet(27, 10)


def test_unknown_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match=r"^unknown model 'densenet121'; choose one of: densenet,"):
        create_model("densenet121")

    def resnet18() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18)


def test_a_seed_makes_a_builder_reproducible_without_touching_the_global_rng() -> None:
    import torch

    from micronet_score.compress.models import create_model, resnet18

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = create_model("densenet121_gr4", seed=0).state_dict()
    b = resnet18(seed=0).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    again = create_model("densenet121_gr4", seed=0).state_dict()
    assert all(torch.equal(a[k], again[k]) for k in a)
    other = create_model("densenet121_gr4", seed=1).state_dict()
    assert not torch.equal(a["conv1.weight"], other["conv1.weight"])
    assert b["conv1.weight"].shape == (64, 3, 3, 3)
