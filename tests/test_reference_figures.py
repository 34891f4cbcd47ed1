"""The published reference figures of the micronet rules (FX-traced, batch 1, 32x32 input)."""

from __future__ import annotations

import pytest
from helpers import resnet18, wide_resnet_28_10
from torch import nn

from micronet_score import score_model


def test_resnet18_exact_without_freebie() -> None:
    report = score_model(resnet18(), freebie=False)
    # Every BatchNorm follows a conv and folds: weights + 4,800 folded biases + the linear's.
    assert report.params == 11_169_162
    assert report.ops == 1_111_656_448
    assert not report.freebie
    assert report.uncounted == ()


def test_resnet18_exact_with_freebie() -> None:
    report = score_model(resnet18())
    assert report.freebie
    assert report.params == 5_584_581  # half of the parameters' 32-bit storage
    assert report.ops == 833_666_304  # multiplications halved, additions kept at 32 bits


def test_resnet18_raw_counts_split_into_mults_and_adds() -> None:
    report = score_model(resnet18(), freebie=False)
    # Without the freebie ops = mults + adds; with it, mults count half.
    with_freebie = score_model(resnet18())
    assert report.mults + report.adds == report.ops
    assert with_freebie.mults / 2 + with_freebie.adds == with_freebie.ops


@pytest.fixture(scope="module")
def wrn_model() -> nn.Module:
    return wide_resnet_28_10()


def test_wideresnet_28_10_within_a_tenth_of_a_percent(wrn_model: nn.Module) -> None:
    report = score_model(wrn_model, freebie=False, baseline="wrn")
    assert report.params == pytest.approx(36.53e6, rel=1e-3)
    assert report.ops == pytest.approx(10.491e9, rel=1e-3)
    assert report.score == pytest.approx(2.00, abs=0.005)


def test_wideresnet_28_10_with_freebie(wrn_model: nn.Module) -> None:
    report = score_model(wrn_model, baseline="wrn")
    assert report.params == pytest.approx(18.27e6, rel=1e-3)
    assert report.ops == pytest.approx(7.868e9, rel=1e-3)
    assert report.score == pytest.approx(1.25, abs=0.005)
