"""The op table: every spelling resolves, registrations are checked, users extend it, subclasses
that change the computation are traced into, and the issue's examples count exactly in every IR.

All figures are hand counts (params, mults, adds at 32 bits, freebie off)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from micronet_score import OpSpec, RegistrationError, register_op, unregister_op
from micronet_score.api import score_model
from micronet_score.ops import index
from micronet_score.ops.cost import FormulaContext, NodeCost, Ops
from micronet_score.ops.spec import all_specs, formula
from micronet_score.results import Report


def figures(report: Report) -> tuple[float, float, float]:
    assert report.uncounted == (), report.uncounted
    return report.params, report.mults, report.adds


def score(model: nn.Module | torch.export.ExportedProgram, *shape: int) -> Report:
    return score_model(model, input_shape=shape, freebie=False)


def three_ways(model: nn.Module, *shape: int) -> list[tuple[float, float, float]]:
    """The same model as a module, a plain export and a core-ATen program."""
    model.eval()
    program = torch.export.export(model, (torch.randn(1, *shape),))
    return [figures(score(m, *shape))
            for m in (model, program, program.run_decompositions())]


# --- the table itself -------------------------------------------------------------------------


def test_every_spelling_in_the_table_exists_in_this_torch() -> None:
    """A typo in a dotted path or an op name would silently never match: refuse it here."""
    import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed
    import torchao  # noqa: F401  (registers the torchao namespace)

    missing = []
    for spec in all_specs():
        for spelling in (*spec.modules, *spec.functions):
            if index._resolve(spelling) is None:
                missing.append(f"{spec.kind}: {spelling}")
        for op in spec.ops:
            namespace, _, name = op.partition("::")
            if not hasattr(getattr(torch.ops, namespace), name):
                missing.append(f"{spec.kind}: {op}")
        for variant in spec.formulas:
            assert callable(formula(spec.kind, variant)), (spec.kind, variant)
    assert missing == []


def test_every_kind_has_a_description() -> None:
    assert [s.kind for s in all_specs() if not s.description] == []


# --- registering from Python ------------------------------------------------------------------


class Scale(nn.Module):
    """A layer of the user's own: one learned factor per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.exp()  # exp: a spelling with no plain formula in this test


def scale_formula(facts: object, ctx: FormulaContext) -> NodeCost:
    from micronet_score.facts import NodeFacts

    assert isinstance(facts, NodeFacts) and facts.output is not None
    return NodeCost(Ops.at(facts.output.numel, ctx.bits.mult, 0, 0))


@pytest.fixture
def scale_kind() -> Iterator[OpSpec]:
    spec = register_op(OpSpec("channel_scale", {"micronet": scale_formula},
                              modules=(Scale,), description="one product per element"))
    yield spec
    unregister_op("channel_scale")


def test_a_registered_module_is_a_leaf_counted_by_its_formula(scale_kind: OpSpec) -> None:
    report = score(nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), Scale(3)), 2, 4, 4)
    (row,) = [layer for layer in report.layers if layer.op == "channel_scale"]
    assert (row.mults, row.adds) == (3 * 16, 0)
    # the formula stores nothing: gamma is charged once as a tensor of the layer's module
    assert figures(report) == (6 + 3, 6 * 16 + 48, 3 * 1 * 16)


def test_duplicate_kinds_and_spellings_are_refused(scale_kind: OpSpec) -> None:
    with pytest.raises(RegistrationError, match="registered twice"):
        register_op(OpSpec("channel_scale", {"micronet": scale_formula}))
    with pytest.raises(RegistrationError, match="already registered for op kind 'linear'"):
        register_op(OpSpec("my_linear", {"micronet": scale_formula},
                           modules=("torch.nn.Linear",)))
    with pytest.raises(RegistrationError, match="no 'micronet' formula"):
        register_op(OpSpec("odd", {"other": scale_formula}))
    with pytest.raises(RegistrationError, match="built-in"):
        unregister_op("conv")


def test_a_formula_that_cannot_count_reports_the_node_uncounted() -> None:
    register_op(OpSpec("bessel", {"micronet": lambda facts, ctx: None},
                       functions=("torch.special.bessel_j0",), description="refuses"))
    try:
        class Odd(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.special.bessel_j0(x)

        report = score(Odd(), 4)
        assert [u.target for u in report.uncounted] == ["special_bessel_j0"]
    finally:
        unregister_op("bessel")


PLUGIN = '''
import torch
from micronet_score import OpSpec, register_op
from micronet_score.ops.cost import NodeCost, Ops

def bessel(facts, ctx):
    return NodeCost(Ops.at(10 * facts.output.numel, ctx.bits.mult, 0, 0))

register_op(OpSpec("bessel_j0", {"micronet": bessel}, functions=("torch.special.bessel_j0",),
                   description="10 products per element"))
'''

FACTORY = '''
import torch

class Odd(torch.nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x)

def build():
    return Odd()
'''


def test_the_cli_loads_a_plugin(tmp_path: Path) -> None:
    (tmp_path / "plugin.py").write_text(PLUGIN)
    (tmp_path / "odd.py").write_text(FACTORY)
    base = [sys.executable, "-m", "micronet_score", f"{tmp_path / 'odd.py'}:build",
            "--input-shape", "4", "--format", "json", "--no-freebie"]
    without = subprocess.run([*base, "--max-score", "1"], capture_output=True, text=True,
                             timeout=120)
    assert without.returncode == 1 and "special_bessel_j0" in without.stderr
    done = subprocess.run([*base, "--plugin", str(tmp_path / "plugin.py"), "--max-score", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mults"] == 40  # 10 products x 4 elements
    twice = subprocess.run([*base, "--plugin", str(tmp_path / "plugin.py"), "--plugin",
                            "micronet_score.ops.table_core"], capture_output=True, text=True,
                           timeout=120)
    assert twice.returncode == 0  # a module of SPECS only registers nothing by being imported
    (tmp_path / "bad.py").write_text(
        "from micronet_score import OpSpec, register_op\n"
        "register_op(OpSpec('x', {'micronet': print}, modules=('torch.nn.Linear',)))\n")
    bad = subprocess.run([*base, "--plugin", str(tmp_path / "bad.py")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: plugin '{tmp_path / 'bad.py'}': module 'torch.nn.Linear' of op kind 'x' is "
        "already registered for op kind 'linear'"]


# --- subclasses that change the computation are traced into -----------------------------------


def test_a_conv_that_pads_itself_is_traced_into() -> None:
    """timm's Conv2dSame pads 7x7 to 9x9 (TF 'same' at stride 2) before a 3x3 conv: 4x4 out.
    Counted as a plain Conv2d it would see 7x7 and give 3x3."""
    timm = pytest.importorskip("timm")
    conv = timm.layers.Conv2dSame(3, 8, 3, stride=2)
    per_output = 3 * 3 * 3
    outputs = 8 * 4 * 4
    expected = (8 * per_output + 8, outputs * per_output, outputs * (per_output - 1) + outputs)
    assert three_ways(conv, 3, 7, 7) == [expected] * 3


def test_a_batch_norm_that_applies_an_activation_counts_it() -> None:
    """timm's BatchNormAct2d: the BatchNorm folds into the conv before it, its relu costs one
    product per element (it was silently dropped when counted as a plain BatchNorm)."""
    timm = pytest.importorskip("timm")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                          timm.layers.BatchNormAct2d(8))
    outputs = 8 * 4 * 4
    conv = (8 * 27 + 8, outputs * 27, outputs * 26 + outputs)  # folded shift: bias + adds
    expected = (conv[0], conv[1] + outputs, conv[2])
    assert figures(score(model.eval(), 3, 4, 4)) == expected


def test_a_standardized_conv_keeps_its_gain() -> None:
    """ScaledStdConv2d standardizes its weight in forward with a learned gain: the weight, the
    gain and the bias are all stored (216 + 8 + 8), and the conv counts 8 x 16 outputs x 27."""
    timm = pytest.importorskip("timm")
    conv = timm.layers.ScaledStdConv2d(3, 8, 3, padding=1)
    report = score(conv.eval(), 3, 4, 4)
    assert report.uncounted == ()
    assert report.params == 216 + 8 + 8
    (row,) = [layer for layer in report.layers if layer.op == "conv"]
    assert (row.mults, row.adds) == (128 * 27, 128 * 26 + 128)


# --- the examples, in every IR --------------------------------------------------------


class ConvBnPoolFc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_core_aten_counts_as_the_module_does() -> None:
    """conv 8x27 (+8 folded shift), relu 512, mean 8 x (63 adds + 1 div), fc 80 + 10."""
    conv = (8 * 27 + 8, 512 * 27, 512 * 26 + 512)
    relu, mean, fc = (0, 512, 0), (0, 8, 8 * 63), (90, 80, 70 + 10)
    expected = tuple(sum(part) for part in zip(conv, relu, mean, fc, strict=True))
    assert expected == (314, 14424, 14408)
    assert three_ways(ConvBnPoolFc(), 3, 8, 8) == [expected] * 3


class GPT2Conv1D(nn.Module):
    """GPT-2's Conv1D: x @ W + b with W stored (in x out) and written as addmm."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 12))
        self.bias = nn.Parameter(torch.randn(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.view(-1, 8), self.weight)


def test_addmm_written_by_hand_is_a_linear_layer() -> None:
    """5 tokens x 12 outputs x 8 products; 7 + 1 (bias) adds per output; 96 + 12 params."""
    assert three_ways(GPT2Conv1D(), 5, 8) == [(108, 480, 480)] * 3


def test_zero_weights_of_a_hand_written_matrix_are_skipped() -> None:
    """Zeros are skipped column by column: W is read as x @ W (columns are dot products)."""
    model = GPT2Conv1D()
    with torch.no_grad():
        model.weight[:, 0] = 0  # output 0 has no product
        model.weight[:4, 1] = 0  # output 1 has 4
    nonzero = 96 - 8 - 4
    # per token: one product per non-zero weight; adds: (nnz_c - 1) for 11 non-empty columns
    # plus one bias add per output
    expected = (108, 5 * nonzero, 5 * (nonzero - 11) + 5 * 12)
    report = score(model, 5, 8)
    assert (report.mults, report.adds) == expected[1:]


@pytest.mark.parametrize(
    ("layer", "shape", "expected"),
    [
        # 4x4 -> 8x8: per dimension 11 (input, tap) pairs land (2 + 3 + 3 + 3): 121 products;
        # every one of the 64 outputs receives at least one: 121 - 64 adds.
        (nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1, bias=False),
         (1, 4, 4), (9, 121, 57)),
        # 4x4 -> 7x7 with a 1x1 kernel: 16 outputs receive 4 products each (48 adds), the 33
        # others none (no negative additions).
        (nn.ConvTranspose2d(4, 1, 1, stride=2, bias=False), (4, 4, 4), (4, 64, 48)),
        # with a bias: one more add for every one of the 49 outputs, one more param
        (nn.ConvTranspose2d(4, 1, 1, stride=2), (4, 4, 4), (5, 64, 48 + 49)),
    ],
)
def test_transposed_convs_count_only_products_that_land(
    layer: nn.Module, shape: tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    assert three_ways(layer, *shape) == [expected] * 3


class LinearRowNorm(nn.Module):
    """BatchNorm1d(5) on a 5x16 -> 5x8 linear normalizes the 5 rows, not the 8 features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def test_batch_norm_that_normalizes_another_axis_does_not_fold() -> None:
    """fc: 136 params, 640 mults, 600 + 40 adds; bn: 2 x 5 params, 40 + 40 ops."""
    assert three_ways(LinearRowNorm(), 5, 16) == [(146, 680, 680)] * 3


def test_batch_norm_after_a_layer_used_twice_does_not_fold() -> None:
    """The conv is called twice; folding the BatchNorm's scale into its weights would change
    the other call: the BatchNorm stays a scale and shift (2 x 4 params, 64 + 64 ops)."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) + self.conv(x)

    conv = (0, 64 * 4, 64 * 3)
    expected = (16 + 8, 2 * conv[1] + 64, 2 * conv[2] + 64 + 64)
    assert figures(score(Twice().eval(), 4, 4, 4)) == expected


def test_batch_norm_without_running_statistics_does_not_fold() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False),
                          nn.BatchNorm2d(2, track_running_stats=False))
    report = score(model.eval(), 2, 2, 2)
    (bn,) = [layer for layer in report.layers if layer.op == "batch_norm"]
    assert (bn.mults, bn.adds, bn.params) == (8, 8, 4)


def test_zero_biases_are_stored_dense() -> None:
    """An all-zero bias costs its 32 bits per value (counting.py), and is not 'sparsity'."""
    fc = nn.Linear(4, 3)
    with torch.no_grad():
        fc.bias.zero_()
    report = score(fc, 4)
    assert report.params == 15
    assert report.layers[0].sparsity == 0.0


def test_an_autocast_region_of_an_exported_program_is_counted() -> None:
    """torch.export wraps an autocast region in one higher-order op around a subgraph: its
    linear (64 products, 56 + 8 adds, 72 params) and the relu after it (8) are counted."""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = self.fc(x)
            return y.float().relu()

    model = Mixed().eval()
    program = torch.export.export(model, (torch.randn(1, 8),))
    assert any("autocast" in str(node.target) for node in program.graph.nodes)
    assert figures(score(program, 8)) == figures(score(model, 8)) == (72, 64 + 8, 64)


# --- found by review: each a hand count in every IR --------------------------------------------


class Lambda(nn.Module):
    def __init__(self, function: object, **tensors: torch.Tensor) -> None:
        super().__init__()
        self.function = function
        for name, value in tensors.items():
            setattr(self, name, nn.Parameter(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.function(self, x)  # type: ignore[operator]
        return result


def test_batch_norm_does_not_fold_across_a_transpose() -> None:
    """The conv's 4 output channels move to axis 2: the BatchNorm normalizes the old H axis.
    conv: 8 params, 64 x 2 mults, 64 adds; BatchNorm: 2 x 4 params, 64 + 64 ops."""
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False))
    model.append(Lambda(lambda self, x: x.transpose(1, 2)))
    model.append(nn.BatchNorm2d(4))
    assert three_ways(model, 2, 4, 4) == [(16, 192, 128)] * 3


def sparse_square() -> torch.Tensor:
    """8 x 8 with column 0 zero and column 1 zero below row 0: 49 non-zeros, 7 columns used."""
    w = torch.randn(8, 8) + 10  # no accidental zeros
    w[:, 0] = 0
    w[1:, 1] = 0
    return w


# Read as W.t(), W's columns are the dot products: 49 products per token over 7 non-empty
# outputs (42 adds), stored sparse: 49 x 32 bits + a 64-bit mask = 51 params.
READ_TRANSPOSED = (51, 5 * 49, 5 * 42)


@pytest.mark.parametrize("forward", [
    lambda self, x: torch.nn.functional.linear(x, self.w.t()),
    lambda self, x: (self.w.t() @ x[0].t()).t(),
    lambda self, x: x @ self.w,
], ids=["linear_of_t", "stored_first", "x_at_w"])
def test_a_matrix_read_transposed_skips_the_zeros_of_its_columns(forward: object) -> None:
    model = Lambda(forward, w=sparse_square())
    assert three_ways(model, 5, 8) == [READ_TRANSPOSED] * 3


def test_x_at_w_dot_t_is_a_linear_layer() -> None:
    """x (5 x 8) @ W.T with W 12 x 8: 12 outputs of 8 products per token."""
    model = Lambda(lambda self, x: x @ self.w.T, w=torch.randn(12, 8))
    assert three_ways(model, 5, 8) == [(96, 480, 420)] * 3


def test_addmm_between_activations_takes_its_length_from_mat1() -> None:
    """b (4,) + x (1 x 8) @ (8 x 4): 4 outputs of 8 products, 7 + 1 adds each."""
    model = Lambda(lambda self, x: torch.addmm(self.b, x, x.view(8, 1).expand(8, 4)),
                   b=torch.randn(4))
    assert three_ways(model, 8) == [(4, 32, 32)] * 3


def test_a_reflect_padded_conv_counts_the_same_in_core_aten() -> None:
    """Core-ATen computes the reflection's indices from `arange`: built once, not counted."""
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", bias=False)
    assert three_ways(conv, 3, 6, 6) == [(108, 4 * 36 * 27, 4 * 36 * 26)] * 3


def test_batch_statistics_in_core_aten_leave_nothing_uncounted() -> None:
    """F.batch_norm(training=True): the running-statistics update (`copy_`) is free."""
    model = Lambda(lambda self, x: torch.nn.functional.batch_norm(
        x, torch.zeros(2), torch.ones(2), training=True))
    program = torch.export.export(model.eval(), (torch.randn(1, 2, 3, 3),))
    assert score(program.run_decompositions(), 2, 3, 3).uncounted == ()


def test_a_formula_that_fails_names_its_kind() -> None:
    register_op(OpSpec("broken", {"micronet": lambda facts, ctx: 1 / 0},
                       functions=("torch.special.bessel_j0",), description="fails"))
    try:
        from micronet_score.errors import UserError

        with pytest.raises(UserError, match="the 'broken' formula failed on node"):
            score(Lambda(lambda self, x: torch.special.bessel_j0(x)), 4)
    finally:
        unregister_op("broken")
