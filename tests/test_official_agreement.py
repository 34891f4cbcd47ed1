"""The analyzer agrees with the official MicroNet counter's rules on real architectures.

The reference (`tests/reference_counting.py`) restates the rules of google-research's
`micronet_challenge/counting.py` and its EfficientNet notebook and shares no code with
`micronet_score`; here it is compared with `score_model` on MobileNetV2 (width 1.4 and 1.0),
EfficientNet-B0 and MnasNet 1.0 (torchvision, 224x224) and the CIFAR ResNet-18 and DenseNet-121
growth 4 (32x32), all with every parameter non-zero, at three settings: 32 bits with the
freebie off, the 16-bit freebie (parameters and multiplications at 16 bits, additions at 32: the
notebook's published use), and weights and activations declared at 8 bits (additions at the
32-bit accumulator). Raw counts (parameters, conv/linear multiplications and additions, and the
multiplications and additions of each other kind of op) and the 32-bit-equivalent totals must be
equal, exactly.

Where the reference goes beyond counting.py, or counting.py and the project part ways (the
reference follows counting.py by default, and each point is a parameter of it):

- relu6 (MobileNetV2): counting.py has no entry (it raises). Both count it as two comparisons,
  each a multiplication, which is how counting.py books relu's one comparison.
- A BatchNorm that cannot fold (DenseNet's pre-activation BatchNorm after a concatenation):
  counting.py has no op for it. Both count a scale and a shift per element (1 multiplication,
  1 addition) and store both per channel; the rules text counts every value needed for inference.
- Average pools over a window (DenseNet's transitions): counting.py has only the global average.
  Both apply its rule per output: one multiplication (the division) and window - 1 additions.
- The notebook's EfficientNet skip connection is counted over the block's expanded channels (it
  reuses the squeeze-excitation's channel count); that is a slip of the notebook, not a rule:
  both count one addition per element of the tensors actually added.
- Additions outside dot products (element-wise and residual sums, pooling sums, the additions
  inside sigmoid and swish, an unfolded BatchNorm's shift): counting.py counts every addition at
  its one `add_bits`, the accumulator's (32 in its published use), and so does the reference by
  default. Counting them at the activation width instead (`Widths(elementwise_adds=8)` at 8 bits)
  gives lower ops for an 8-bit model. The project's `micronet` default follows counting.py; while
  the analyzer still counts them at the activation width, the 8-bit totals test is an expected
  failure (the 32-bit and freebie figures do not depend on it).
- Zero biases: counting.py stores every bias (and so every folded BatchNorm shift) dense at the
  parameter width, and applies sparsity to conv and linear weights only. The rules text asks for
  a bitmask for sparse matrices and does not single out biases, so a mask for an all-zero bias
  is a possible reading, but not counting.py's; the project follows counting.py. It matters for
  any untrained model, whose folded shifts are all zero: while the analyzer still stores such a
  bias as a 1-bit mask, the zero-bias test is an expected failure.
- Not exercised here, where the project deliberately goes further than counting.py:
  counting.py takes one declared sparsity for the whole model, the analyzer measures the zeros
  of each output channel and stores each tensor in the cheapest of dense, sparse, kernel- or
  filter-mask form (the rules text allows one mask bit per block); counting.py has one
  multiplication width for the whole model, the analyzer takes the wider of each
  multiplication's two input widths. With no zeros and one width the two readings coincide,
  which is what these tests fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import without_zeros
from reference_counting import Conventions, Op, Totals, Widths, count, extract_ops
from torch import nn

from micronet_score import score_model
from micronet_score.compress.models import create_model
from micronet_score.results import Report

IMAGENET = (3, 224, 224)
CIFAR = (3, 32, 32)

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mobilenet_v2_1.4": (lambda: torchvision.models.mobilenet_v2(width_mult=1.4), IMAGENET),
    "mobilenet_v2_1.0": (torchvision.models.mobilenet_v2, IMAGENET),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, IMAGENET),
    "mnasnet1_0": (torchvision.models.mnasnet1_0, IMAGENET),
    "cifar_resnet18": (lambda: create_model("resnet18"), CIFAR),
    "cifar_densenet121_gr4": (lambda: create_model("densenet121_gr4"), CIFAR),
}

# (reference widths, score_model keyword arguments) per setting.
SETTINGS: dict[str, tuple[Widths, dict[str, Any]]] = {
    "32-bit": (Widths(params=32, mults=32, adds=32), {"freebie": False}),
    "freebie": (Widths(params=16, mults=16, adds=32), {}),
    "8-bit": (Widths(params=8, mults=8, adds=32), {"weight_bits": 8, "act_bits": 8}),
}

# The analyzer's op names, as the reference labels them.
LABELS = {
    "conv": "conv", "linear": "linear", "batch_norm": "batch_norm", "add": "add",
    "mul": "scale", "adaptive_avg_pool": "avg_pool", "avg_pool": "avg_pool", "mean": "avg_pool",
    "relu": "relu", "relu6": "relu6", "silu": "swish", "sigmoid": "sigmoid",
}


@dataclass
class Cache:
    """Each model built, read by the reference and scored once per test module."""

    models: dict[str, nn.Module] = field(default_factory=dict)
    ops: dict[str, tuple[Op, ...]] = field(default_factory=dict)
    reports: dict[tuple[str, str], Report] = field(default_factory=dict)

    def model(self, name: str) -> nn.Module:
        if name not in self.models:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.models[name] = without_zeros(MODELS[name][0]())
        return self.models[name]

    def reference(self, name: str, setting: str) -> Totals:
        if name not in self.ops:
            self.ops[name] = extract_ops(self.model(name), MODELS[name][1])
        return count(self.ops[name], SETTINGS[setting][0])

    def report(self, name: str, setting: str) -> Report:
        if (name, setting) not in self.reports:
            self.reports[name, setting] = score_model(
                self.model(name), input_shape=MODELS[name][1], **SETTINGS[setting][1]
            )
        return self.reports[name, setting]


@pytest.fixture(scope="module")
def cache() -> Cache:
    return Cache()


def exact(*values: float) -> tuple[Fraction, ...]:
    """The analyzer's figures as exact fractions, to compare with the reference's."""
    return tuple(Fraction(value) for value in values)


def whole(*values: Fraction) -> tuple[int, ...]:
    """The reference's figures as integers, each checked to be whole."""
    assert all(value.denominator == 1 for value in values), values
    return tuple(int(value) for value in values)


def by_kind(report: Report) -> dict[str, tuple[Fraction, ...]]:
    """Raw (mults, adds) per reference label, leaving out kinds that cost nothing (folded
    BatchNorms)."""
    totals: dict[str, tuple[Fraction, ...]] = {}
    for layer in report.layers:
        label = LABELS[layer.op]
        mults, adds = totals.get(label, (Fraction(0), Fraction(0)))
        totals[label] = (mults + Fraction(layer.mults), adds + Fraction(layer.adds))
    return {label: pair for label, pair in totals.items() if any(pair)}


def conv_linear(report: Report) -> tuple[Fraction, ...]:
    """Raw mults, raw adds and 32-bit-equivalent ops of the conv and linear layers."""
    rows = [layer for layer in report.layers if layer.op in ("conv", "linear")]
    return exact(sum(r.mults for r in rows), sum(r.adds for r in rows),
                 sum(r.effective_ops for r in rows))


@pytest.mark.parametrize("name", MODELS)
def test_raw_counts_equal_the_reference(cache: Cache, name: str) -> None:
    ours, reference = cache.report(name, "32-bit"), cache.reference(name, "32-bit")
    assert not ours.uncounted
    assert exact(sum(layer.params for layer in ours.layers)) == (reference.params,)
    assert conv_linear(ours)[:2] == (reference.dot_mults, reference.dot_adds)
    assert by_kind(ours) == {k: v for k, v in reference.by_kind.items() if any(v)}
    assert exact(ours.mults, ours.adds) == (reference.mults, reference.adds)


@pytest.mark.parametrize("setting", ["32-bit", "freebie"])
@pytest.mark.parametrize("name", MODELS)
def test_params_and_ops_equal_the_reference(cache: Cache, name: str, setting: str) -> None:
    ours, reference = cache.report(name, setting), cache.reference(name, setting)
    assert ours.freebie == (setting == "freebie")
    assert exact(ours.params, ours.ops) == (reference.effective_params, reference.ops)


@pytest.mark.parametrize("name", MODELS)
def test_8bit_params_and_dot_products_equal_the_reference(cache: Cache, name: str) -> None:
    ours, reference = cache.report(name, "8-bit"), cache.reference(name, "8-bit")
    assert not ours.freebie
    assert exact(ours.params) == (reference.effective_params,)
    # conv/linear: multiplications at 8 bits, accumulations and bias adds at the 32-bit accumulator
    assert conv_linear(ours)[2] == reference.dot_mults * 8 / 32 + reference.dot_adds


@pytest.mark.parametrize("name", MODELS)
def test_8bit_ops_equal_the_reference(cache: Cache, name: str) -> None:
    ours, reference = cache.report(name, "8-bit"), cache.reference(name, "8-bit")
    assert exact(ours.ops) == (reference.ops,)


def seeded(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().eval()


@pytest.mark.parametrize(
    ("build", "shape"),
    [(lambda: create_model("resnet18"), CIFAR), (torchvision.models.efficientnet_b0, IMAGENET)],
    ids=["cifar_resnet18", "efficientnet_b0"],
)
def test_zero_biases_are_stored_dense(
    build: Callable[[], nn.Module], shape: tuple[int, ...]
) -> None:
    """Untrained models as built: random weights, zero biases and BatchNorm shifts."""
    model = seeded(build)
    ops = extract_ops(model, shape)
    assert sum(op.weight_zeros for op in ops) == 0  # zeros only in biases: no sparsity to declare
    reference = count(ops)
    ours = score_model(model, input_shape=shape, freebie=False)
    assert exact(ours.params, ours.ops) == (reference.effective_params, reference.ops)


# The reference itself, against counts derived by hand from counting.py's rules.


class Tiny(nn.Module):
    """conv-BN-relu, a depthwise conv with a bias and a sigmoid, a sum, a product, a BatchNorm
    that cannot fold, a global average and a dense layer with swish; input 3x4x4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn(self.conv(x)))
        b = torch.sigmoid(self.depthwise(a))
        pooled = F.adaptive_avg_pool2d(self.norm((a + b) * b), 1)
        return F.silu(self.fc(pooled.flatten(1)))


def test_reference_counts_a_small_model_by_hand() -> None:
    totals = count(extract_ops(without_zeros(Tiny()), (3, 4, 4)))
    # conv: 64 outputs of 27-long dot products, + folded shift: 108 + 4 values, 1728 mults,
    # 26*64 + 64 = 1728 adds; depthwise: 36 + 4 values, 9*64 = 576 mults, 8*64 + 64 = 576 adds.
    assert {label: whole(*pair) for label, pair in totals.by_kind.items()} == {
        "conv": (2304, 2304),
        "relu": (64, 0),
        "sigmoid": (128, 64),
        "add": (0, 64),
        "scale": (64, 0),
        "batch_norm": (64, 64),     # 4 channels x (scale, shift) stored: 8 values
        "avg_pool": (4, 4 * 15),
        "linear": (8, 3 * 2 + 2),   # 8 weights + 2 biases
        "swish": (6, 2),
    }
    assert whole(totals.params, totals.mults, totals.adds) == (170, 2642, 2566)
    assert whole(totals.dot_mults, totals.dot_adds) == (2312, 2312)
    assert whole(totals.effective_params, totals.ops) == (170, 2642 + 2566)


def test_reference_widths_and_conventions() -> None:
    ops = extract_ops(without_zeros(Tiny()), (3, 4, 4))
    eight = count(ops, Widths(params=8, mults=8, adds=32))
    assert eight.effective_params == Fraction(170 * 8, 32)
    assert eight.ops == Fraction(2642 * 8, 32) + 2566
    activation_width = count(ops, Widths(params=8, mults=8, adds=32, elementwise_adds=8))
    assert activation_width.ops == Fraction(2642 * 8, 32) + 2312 + Fraction((2566 - 2312) * 8, 32)
    unfolded = count(ops, conventions=Conventions(fold_batch_norm=False))
    # the conv loses its folded bias (4 values, 64 adds); its BatchNorm costs 64 + 64, 8 values
    assert whole(unfolded.params, unfolded.mults, unfolded.adds) == (174, 2642 + 64, 2566)


def test_reference_declared_sparsity_touches_weights_only() -> None:
    ops = extract_ops(without_zeros(nn.Linear(4, 2)), (4,))
    half = count(ops, sparsity=Fraction(1, 2))
    # 8 weights: half at 32 bits plus an 8-bit mask; 2 biases dense at 32 bits
    assert whole(half.param_bits, half.mults, half.adds) == (4 * 32 + 8 + 2 * 32, 2 * 2, 1 * 2 + 2)


def test_reference_folds_only_a_batchnorm_of_the_layers_outputs() -> None:
    """Linear(16, 8) on 5 rows, then BatchNorm1d(5) over the rows: it cannot fold."""
    model = without_zeros(nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(5)))
    totals = count(extract_ops(model, (5, 16)))
    assert whole(totals.params, totals.mults, totals.adds) == (146, 680, 680)


def test_reference_refuses_what_it_has_no_rule_for() -> None:
    with pytest.raises(ValueError, match="gelu"):
        extract_ops(nn.Sequential(nn.Linear(4, 4), nn.GELU()), (4,))
    ops = extract_ops(without_zeros(nn.Sequential(nn.Linear(4, 4), nn.ReLU())), (4,))
    with pytest.raises(ValueError, match="relu"):
        count(ops, conventions=Conventions(activations={}))
    pruned = nn.Linear(4, 4)
    without_zeros(pruned)
    with torch.no_grad():
        pruned.weight[0, 0] = 0.0
    with pytest.raises(ValueError, match="1 zero weights"):
        count(extract_ops(pruned, (4,)))
