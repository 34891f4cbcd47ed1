"""Declared and dtype-derived bit widths, accumulators and the 16-bit freebie."""

from __future__ import annotations

import pytest
import torch
from helpers import layer
from torch import nn

from micronet_score import UserError, score_model
from micronet_score.bits import BitsDeclaration, parse_declaration


class BodyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False))
        self.head = nn.Linear(48, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def ones(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    return model.eval()


def conv() -> nn.Module:
    return ones(nn.Conv2d(2, 3, 3, padding=1, bias=False))


def test_declared_8_bits_everywhere() -> None:
    # 864 mults at 8/32, 816 accumulation adds stay at the 32-bit accumulator.
    report = score_model(conv(), input_shape=(2, 4, 4), weight_bits=8, act_bits=8)
    assert report.ops == 864 / 4 + 816
    assert report.params == 54 * 8 / 32
    assert not report.freebie
    assert "8/8" in report.freebie_reason


def test_mult_counts_at_the_wider_input() -> None:
    report = score_model(conv(), input_shape=(2, 4, 4), weight_bits=8)
    (row,) = report.layers
    assert (row.weight_bits, row.act_bits) == (8, 32)
    assert report.ops == 864 + 816
    assert report.params == 13.5


def test_narrow_accumulator() -> None:
    report = score_model(
        conv(), input_shape=(2, 4, 4), weight_bits=8, act_bits=8, accumulator_bits=16
    )
    assert report.ops == 864 / 4 + 816 / 2


def test_pattern_declaration_covers_submodules_only() -> None:
    report = score_model(ones(BodyHead()), input_shape=(2, 4, 4), bits=["body=8/8"])
    assert (layer(report, "body.0").weight_bits, layer(report, "body.0").act_bits) == (8, 8)
    assert (layer(report, "head").weight_bits, layer(report, "head").act_bits) == (32, 32)
    # head stays 32-bit, but the body is below 16 bits: no freebie anywhere.
    assert not report.freebie
    assert report.params == 54 / 4 + 96
    assert report.ops == 864 / 4 + 816 + 96 + 94


def test_later_declaration_wins_and_weight_only_keeps_activation_width() -> None:
    report = score_model(ones(BodyHead()), input_shape=(2, 4, 4),
                         bits={"*": "8/8", "head": "4"})
    assert (layer(report, "head").weight_bits, layer(report, "head").act_bits) == (4, 8)


def test_unmatched_pattern_warns() -> None:
    report = score_model(ones(BodyHead()), input_shape=(2, 4, 4), bits=["bdy=8"])
    assert report.warnings == (
        "--bits pattern 'bdy' matches no module",
        "the classifier (head) gives 2 outputs, while baseline 'wrn' is for CIFAR-100 (100 "
        "classes); if the model is for another data set, check --baseline ('micronet-score "
        "rules' lists them)",
        "the model was scored at input 2x4x4, baseline 'wrn' at 3x32x32: the score compares "
        "costs at different input sizes",
    )


def test_half_precision_model() -> None:
    report = score_model(conv().half(), input_shape=(2, 4, 4))
    (row,) = report.layers
    assert (row.weight_bits, row.act_bits) == (16, 16)
    assert report.params == 54 / 2
    assert report.ops == 864 / 2 + 816  # additions stay at 32-bit accumulators


def test_freebie_halves_params_and_mults_only() -> None:
    on = score_model(conv(), input_shape=(2, 4, 4))
    off = score_model(conv(), input_shape=(2, 4, 4), freebie=False)
    assert on.freebie and not off.freebie
    assert off.freebie_reason == "turned off by the user"
    assert (off.params, off.ops) == (54, 864 + 816)
    assert (on.params, on.ops) == (27, 432 + 816)


@pytest.mark.parametrize("text", ["dense3", "dense3=", "dense3=8/", "=8", "x=0", "x=8/65"])
def test_malformed_declarations(text: str) -> None:
    with pytest.raises(UserError, match="bit"):
        parse_declaration(text)


def test_declaration_matching() -> None:
    declaration = parse_declaration("dense3=8/4")
    assert declaration == BitsDeclaration("dense3", 8, 4)
    assert declaration.matches("dense3")
    assert declaration.matches("dense3.5.conv2")
    assert not declaration.matches("dense30")
    assert parse_declaration("*.conv2=4").matches("dense1.0.conv2")


def test_an_out_of_range_global_width_names_its_option() -> None:
    from micronet_score.bit_declarations import declarations

    with pytest.raises(UserError, match="'--weight-bits 99': use 1 to 64 bits"):
        declarations(None, weight_bits=99)
    with pytest.raises(UserError, match="'--act-bits 0'"):
        declarations(None, act_bits=0)
