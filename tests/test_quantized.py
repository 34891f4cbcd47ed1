"""Quantized models: bits read from torch.ao FX, QAT fake-quant and torchao PT2E graphs."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import layer
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    HistogramObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    QConfig,
    QConfigMapping,
)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

from micronet_score import UserError, score_model
from micronet_score.compress.models import create_model
from micronet_score.results import Report
from micronet_score.views import compare

SKIPPED = ("trans3", "dense1", "dense2")
PTQ = QConfig(
    activation=HistogramObserver.with_args(reduce_range=True),
    weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                              qscheme=torch.per_channel_symmetric),
)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """torch.ao quantization warns that it is deprecated on every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def fx_quantize(model: nn.Module, shape: tuple[int, ...], skip: tuple[str, ...] = ()) -> nn.Module:
    mapping = QConfigMapping().set_global(PTQ)
    for name in skip:
        mapping.set_module_name(name, None)
    torch.manual_seed(0)
    example = torch.rand(4, *shape)
    prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, (example,))
    prepared(example)
    return convert_fx(prepared)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.linear = nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.relu(self.conv(x)).flatten(1))


def tiny() -> Tiny:
    model = Tiny().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)  # every weight quantizes to code 127: no zeros
    return model


def test_fx_quantized_counts_by_hand() -> None:
    quantized = fx_quantize(tiny(), (2, 4, 4))
    report = score_model(quantized, input_shape=(2, 4, 4))
    conv, linear = layer(report, "conv"), layer(report, "linear")
    assert (conv.target, conv.weight_bits, conv.act_bits) == ("ConvReLU2d", 8, 8)
    assert (linear.weight_bits, linear.act_bits) == (8, 8)
    assert not report.freebie
    # conv: 48 outputs x 18 products at 8 bits, 17 accumulations + 1 bias add at 32 bits,
    # and its fused relu (1 per element, at 8 bits).
    assert conv.effective_ops == 864 * 8 / 32 + 864 + 48 * 8 / 32
    # weights 54 x 8, float bias 3 x 32, per-channel scales 3 x 32 (symmetric: zero points
    # are all 0 and implied), output scale 32 + zero point 8 (unless 0, as after a relu).
    def output_qparams(module: nn.Module) -> int:
        return 32 + (8 if module.zero_point else 0)

    assert conv.storage_bits == 54 * 8 + 3 * 32 + 3 * 32 + output_qparams(quantized.conv)
    assert linear.effective_ops == 96 * 8 / 32 + 96
    assert linear.storage_bits == 96 * 8 + 2 * 32 + 2 * 32 + output_qparams(quantized.linear)
    # the input and the flattened activations are quantized: a scale and a zero point each.
    assert [row.op for row in report.layers] == ["quantize", "conv", "quantize", "linear"]
    quantize_bits = sum(
        32 + (8 if getattr(quantized, str(node.args[2].target)).item() else 0)
        for node in quantized.graph.nodes
        if node.target is torch.quantize_per_tensor
    )
    assert report.params * 32 == conv.storage_bits + linear.storage_bits + quantize_bits
    assert report.ops == conv.effective_ops + linear.effective_ops


@pytest.fixture(scope="module")
def densenet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("densenet121_gr4").eval()


def declared_like_fx(skip: tuple[str, ...]) -> list[str]:
    batch_norms = ["bn=32/8", "*.bn=32/8", "*.bn1=32/8"]
    return ["*=8/8", *batch_norms, *(f"{name}=32/32" for name in skip)]


def test_fx_local_quantization_of_the_densenet(densenet: nn.Module) -> None:
    quantized = fx_quantize(densenet, (3, 32, 32), SKIPPED)
    report = score_model(quantized, input_shape=(3, 32, 32))
    # compare float -> quantized, by block: every quantized stage's score goes down; the float
    # islands keep their 32-bit storage (no freebie on either side here).
    float_report = score_model(densenet, freebie=False)
    by_block = {c.name: c for c in compare(float_report, report, depth=1).changes}
    for block in ("conv1", "dense3", "dense4", "trans1", "trans2"):
        assert by_block[block].score_change < 0, block
    for block in SKIPPED:
        change = by_block[block]
        assert change.before is not None and change.after is not None
        assert change.after.storage == change.before.storage, block
    convs = [row for row in report.layers if row.op == "conv"]
    for row in convs:
        expected = 32 if row.module.startswith(SKIPPED) else 8
        assert (row.weight_bits, row.act_bits) == (expected, expected), row.name
    assert {row.module.split(".")[0] for row in convs if row.weight_bits == 32} == set(SKIPPED)
    assert not report.freebie
    declared = score_model(densenet, input_shape=(3, 32, 32),
                           bits=declared_like_fx(SKIPPED))
    # Same choices: int8 weights and activations except in the skipped stages. The quantized
    # engine keeps BatchNorm's scale and shift in float32, so the declaration says so too.
    assert report.score == pytest.approx(declared.score, rel=0.01)
    # What remains is real storage the float model does not have: float32 biases (declared
    # at 8 bits), a 32-bit scale per output channel of each quantized layer, and a scale and
    # zero point per quantized tensor. The operations agree closely (int8 weights that round
    # to 0 are skipped in the quantized model).
    assert report.params > declared.params
    assert report.ops == pytest.approx(declared.ops, rel=0.002)


def pt2e_quantize(model: nn.Module, shape: tuple[int, ...], skip: tuple[str, ...]) -> nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    example = torch.rand(1, *shape)
    graph = torch.export.export(copy.deepcopy(model), (example,)).module()
    quantizer = x86.X86InductorQuantizer().set_global(
        x86.get_default_x86_inductor_quantization_config()
    )
    for name in skip:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(graph, quantizer)  # type: ignore[arg-type]
    prepared(example)
    return convert_pt2e(prepared)


class TwoStages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(2, 3, 3, padding=1)
        self.second = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(F.relu(self.first(x)))


def test_pt2e_bits_follow_the_quantizer_and_survive_saving(tmp_path: Path) -> None:
    model = TwoStages().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    converted = pt2e_quantize(model, (2, 4, 4), skip=("second",))
    report = score_model(converted, input_shape=(2, 4, 4))
    first, second = layer(report, "first"), layer(report, "second")
    assert (first.weight_bits, first.act_bits) == (8, 8)  # int8 weights, uint8 input
    assert (second.weight_bits, second.act_bits) == (32, 32)  # left in float
    # 48 outputs x 18 products at 8 bits; 17 accumulations and a bias add at 32 bits.
    assert first.effective_ops == 864 / 4 + 864
    assert first.storage_bits == 54 * 8 + 3 * 32  # int8 weights, float bias
    path = tmp_path / "pt2e.pt2"
    torch.export.save(torch.export.export(converted, (torch.rand(1, 2, 4, 4),)), path)
    reloaded = score_model(torch.export.load(path))
    def bits(rows: Report) -> list[tuple[str, int | None, int]]:
        return [(r.name, r.weight_bits, r.act_bits) for r in rows.layers if r.op == "conv"]

    assert bits(reloaded) == bits(report)
    assert reloaded.score == pytest.approx(report.score)


@pytest.mark.slow
def test_pt2e_local_quantization_of_the_densenet(densenet: nn.Module) -> None:
    report = score_model(pt2e_quantize(densenet, (3, 32, 32), SKIPPED), input_shape=(3, 32, 32))
    convs = [row for row in report.layers if row.op == "conv"]
    assert len(convs) == 120
    for row in convs:
        assert row.weight_bits == (32 if row.module.startswith(SKIPPED) else 8), row.name


def qat_model() -> nn.Module:
    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8
    )
    weight = FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=-8, quant_max=7,
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
    )
    mapping = QConfigMapping().set_global(QConfig(activation=activation, weight=weight))
    example = torch.rand(2, 2, 4, 4)
    prepared = prepare_qat_fx(tiny().train(), mapping, (example,))
    prepared(example)  # observers size their per-channel scales
    return prepared


def test_qat_four_bit_weights_eight_bit_activations() -> None:
    model = qat_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = score_model(model, input_shape=(2, 4, 4))
    conv = layer(report, "conv")
    assert (conv.weight_bits, conv.act_bits) == (4, 8)
    # multiplications at max(4, 8) = 8 bits; accumulation at 32; the fused relu at 8 bits.
    assert conv.effective_ops == 864 * 8 / 32 + 864 + 48 * 8 / 32
    # weights at 4 bits, float bias, and the scale per channel that converting will store
    # (symmetric: the zero points are all 0 and implied).
    assert conv.storage_bits == 54 * 4 + 3 * 32 + 3 * 32
    assert not report.freebie
    after = model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())


def test_half_precision_model() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU()).eval().half()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    report = score_model(model, input_shape=(2, 4, 4), freebie=False)
    conv = layer(report, "0")
    assert (conv.weight_bits, conv.act_bits) == (16, 16)
    assert conv.storage_bits == 54 * 16
    assert conv.effective_ops == 864 * 16 / 32 + 816  # additions stay at 32 bits


def test_prepared_but_not_converted_is_refused() -> None:
    mapping = QConfigMapping().set_global(PTQ)
    prepared = prepare_fx(tiny(), mapping, (torch.rand(1, 2, 4, 4),))
    with pytest.raises(UserError, match="prepared for quantization but not converted"):
        score_model(prepared, input_shape=(2, 4, 4))


def test_scoring_does_not_touch_observers_or_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Dropout()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score_model(model, input_shape=(2, 4, 4))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
