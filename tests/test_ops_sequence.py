"""Recurrent layers, attention, einsum and torchvision's Swin helpers, counted by hand.

Element-wise costs are those of rules/micronet.yaml: sigmoid 2 products + 1 add, tanh 1 product,
relu 1 product, softmax 2 products + 1 add per element. Models are scored at batch 1 with the
freebie off, so every figure is a raw count.
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

import pytest
import torch
import torch.nn.functional as F
from helpers import layers_of
from torch import nn

from micronet_score import score_model
from micronet_score.ops.formulas_einsum import EinsumCount, einsum_count
from micronet_score.ops.spec import OpSpec, all_specs, register_op, unregister_op
from micronet_score.ops.table_sequence import SPECS
from micronet_score.results import Report


class First(nn.Module):
    """Calls a layer and keeps its first output (recurrent layers return tuples)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        first: torch.Tensor = out[0] if isinstance(out, tuple) else out
        return first


class Call(nn.Module):
    def __init__(self, function: object) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)  # type: ignore[operator,no-any-return]


M = TypeVar("M", bound=nn.Module)


def ones(model: M) -> M:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    return model.eval()


def figures(report: Report) -> tuple[float, float, float]:
    assert report.uncounted == (), report.uncounted
    return report.params, report.mults, report.adds


def score(model: nn.Module, shape: tuple[int, ...]) -> tuple[float, float, float]:
    return figures(score_model(model, input_shape=shape, freebie=False))


def exported(model: nn.Module, shape: tuple[int, ...], core: bool = False) -> Report:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (torch.randn(1, *shape),))
        if core:
            program = program.run_decompositions()
    return score_model(program, freebie=False)


def test_every_spec_has_a_description_and_the_table_loads() -> None:
    assert all(spec.description for spec in SPECS)
    kinds = {spec.kind for spec in all_specs()}
    assert {spec.kind for spec in SPECS} <= kinds


# --- recurrent layers: per step, G gates of H units; I inputs -----------------------------


def test_gru_two_layers_bidirectional_by_hand() -> None:
    gru = First(ones(nn.GRU(4, 3, num_layers=2, bidirectional=True, batch_first=True)))
    # Layer 0, per direction and step: input 9x4 (36 products, 27 + 9 bias adds), hidden 9x3
    # (27 products, 18 + 9 bias adds), 9 gate sums; per unit 2 sigmoids (4, 2), tanh (1),
    # r*h_n and z*(h - n) (2 products), h - n and n + ... (2 adds): 21 products, 12 adds.
    layer0 = (36 + 27 + 21, 36 + 27 + 9 + 12)
    # Layer 1 reads both directions (6 inputs): input 9x6 (54 products, 45 + 9 adds).
    layer1 = (54 + 27 + 21, 54 + 27 + 9 + 12)
    steps, directions = 5, 2
    params = directions * ((36 + 27 + 18) + (54 + 27 + 18))
    assert score(gru, (5, 4)) == (
        params,
        steps * directions * (layer0[0] + layer1[0]),
        steps * directions * (layer0[1] + layer1[1]),
    )


def test_gru_without_bias_by_hand() -> None:
    gru = First(ones(nn.GRU(4, 3, bias=False)))
    # 36 + 27 products and 27 + 18 accumulations, 9 gate sums, 21 products and 12 adds per step
    # (sequence first: the batch dimension of 1 in front is the time axis, 5 is the batch).
    assert score(gru, (5, 4)) == (36 + 27, 5 * (36 + 27 + 21), 5 * (27 + 18 + 9 + 12))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_by_hand(nonlinearity: str) -> None:
    rnn = First(ones(nn.RNN(4, 3, num_layers=2, nonlinearity=nonlinearity, batch_first=True)))
    # Layer 0: 12 + 9 products, (9 + 3) + (6 + 3) adds, 3 sums, 3 tanh or relu (1 product each).
    # Layer 1: 9 + 9 products, (6 + 3) + (6 + 3) adds, 3 sums, 3 activations.
    per_step = ((12 + 9 + 3) + (9 + 9 + 3), (12 + 9 + 3) + (9 + 9 + 3))
    params = (12 + 9 + 6) + (9 + 9 + 6)
    assert score(rnn, (5, 4)) == (params, 5 * per_step[0], 5 * per_step[1])


def test_projected_bidirectional_lstm_by_hand() -> None:
    lstm = First(ones(nn.LSTM(4, 3, num_layers=2, bidirectional=True, proj_size=2,
                              batch_first=True)))
    # Per layer, direction and step (layer 1 reads 2 x 2 projected outputs, so also 4 inputs):
    # input 12x4 (48 products, 36 + 12 adds), hidden 12x2 (24, 12 + 12), W_hr 2x3 (6, 4),
    # 12 gate sums; per unit 3 sigmoids (6, 3), 2 tanh (2), 3 products, 1 add: 33 and 12.
    step = (48 + 24 + 6 + 33, 48 + 24 + 4 + 12 + 12)
    params = 4 * (48 + 24 + 12 + 12 + 6)
    assert score(lstm, (5, 4)) == (params, 5 * 4 * step[0], 5 * 4 * step[1])


@pytest.mark.parametrize(("cell", "expected"), [
    # 48 + 36 products, 36 + 12 and 24 + 12 adds, 12 sums, 33 products and 12 adds per unit set.
    (nn.LSTMCell(4, 3), (48 + 36 + 12 + 12, 48 + 36 + 33, 48 + 36 + 12 + 12)),
    (nn.GRUCell(4, 3), (36 + 27 + 9 + 9, 36 + 27 + 21, 36 + 27 + 9 + 12)),
    (nn.RNNCell(4, 3, nonlinearity="relu"), (12 + 9 + 3 + 3, 12 + 9 + 3, 12 + 9 + 3)),
    (nn.RNNCell(4, 3, bias=False), (12 + 9, 12 + 9 + 3, 9 + 6 + 3)),
])
def test_cells_by_hand_as_module_and_export(cell: nn.Module, expected: tuple[int, ...]) -> None:
    model = First(ones(cell))
    assert score(model, (4,)) == expected
    assert figures(exported(model, (4,))) == expected


@pytest.mark.parametrize("layer", [
    nn.GRU(4, 3, num_layers=2, bidirectional=True, batch_first=True),
    nn.RNN(4, 3, nonlinearity="relu", batch_first=True),
    nn.LSTM(4, 3, num_layers=2, proj_size=2, batch_first=True),
])
def test_recurrent_layers_count_the_same_in_core_aten(layer: nn.Module) -> None:
    """PyTorch's own decomposition (core ATen: addmm, sigmoid, tanh, mul, add, sub per step)
    is an independent count of the same arithmetic."""
    model = First(ones(layer))
    assert figures(exported(model, (5, 4), core=True)) == score(model, (5, 4))


def test_recurrent_layers_count_the_same_in_a_plain_export() -> None:
    model = First(ones(nn.GRU(4, 3, num_layers=2, bidirectional=True, batch_first=True)))
    assert figures(exported(model, (5, 4))) == score(model, (5, 4))


# --- attention ----------------------------------------------------------------------------


def sdpa(**options: Any) -> nn.Module:
    """Queries: 2 heads x 5 tokens x depth 4; keys and values: the first 3 tokens."""
    return Call(lambda x: F.scaled_dot_product_attention(x, x[:, :, :3], x[:, :, :3], **options))


# Scale 2*5*4 = 40 products; 30 scores of depth 4: 120 products, 90 adds; softmax 60 and 30;
# 40 outputs summing 3 weighted values: 120 products, 80 adds.
SDPA = (40 + 120 + 60 + 120, 90 + 30 + 80)


@pytest.mark.parametrize(("options", "expected"), [
    ({}, SDPA),
    ({"scale": 1.0}, (SDPA[0] - 40, SDPA[1])),
    ({"scale": 0.1}, SDPA),
    ({"attn_mask": torch.ones(5, 3, dtype=torch.bool)}, SDPA),  # a selection: free
])
def test_scaled_dot_product_attention_by_hand(options: dict[str, Any],
                                              expected: tuple[int, int]) -> None:
    assert score(sdpa(**options), (2, 5, 4))[1:] == expected


def test_an_additive_mask_is_one_add_per_score_and_a_stored_value() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mask: torch.Tensor
            self.register_buffer("mask", torch.randn(5, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k = x[:, :, :3]
            return F.scaled_dot_product_attention(x, k, k, attn_mask=self.mask)

    assert score(Masked(), (2, 5, 4)) == (15, SDPA[0], SDPA[1] + 30)


def test_causal_and_grouped_query_attention_count_every_score() -> None:
    # Self-attention over 5 tokens: scale 40, 50 scores (200 products, 150 adds), softmax
    # (100, 50), 40 outputs of 5 terms (200, 160); causal masking only selects.
    full = (40 + 200 + 100 + 200, 150 + 50 + 160)
    causal = Call(lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True))
    assert score(causal, (2, 5, 4))[1:] == full
    # 4 query heads sharing 2 key/value heads: every query head computes its own scores.
    grouped = Call(lambda x: F.scaled_dot_product_attention(
        x, x[:, :2], x[:, :2], enable_gqa=True))
    assert score(grouped, (4, 5, 4))[1:] == (2 * full[0], 2 * full[1])


def test_attention_counts_the_same_as_a_module_and_an_export() -> None:
    model = sdpa()
    assert figures(exported(model, (2, 5, 4)))[1:] == SDPA


@pytest.mark.parametrize("fused", [True, False])
def test_timm_attention_fused_or_not_by_hand(fused: bool) -> None:
    attention_module = pytest.importorskip("timm.layers.attention")
    Attention = attention_module.Attention

    attention = ones(Attention(8, num_heads=2, qkv_bias=True))
    setattr(attention, "fused_attn", fused)  # noqa: B010 (declared Final in timm)
    model = First(attention)  # called with its defaults (attn_mask=None, is_causal=False)
    # qkv: 5 tokens x 24 rows x 8 (960 products, 960 adds with the bias); scale 40; 50 scores
    # of depth 4 (200, 150); softmax (100, 50); 40 outputs of 5 terms (200, 160); proj 5 x 8 x 8
    # (320, 320).
    expected = (192 + 24 + 64 + 8, 960 + 40 + 200 + 100 + 200 + 320,
                960 + 150 + 50 + 160 + 320)
    assert score(model, (5, 8)) == expected


class WithMultiheadAttention(nn.Module):
    def __init__(self, attention: nn.MultiheadAttention, **call: object) -> None:
        super().__init__()
        self.attention = attention
        self.call = call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = x if self.attention._qkv_same_embed_dim else torch.cat([x, x[..., :2]], -1)
        out: torch.Tensor = self.attention(x, kv, kv, **self.call)[0]
        return out


def test_multihead_attention_with_weights_and_a_mask_by_hand() -> None:
    model = WithMultiheadAttention(ones(nn.MultiheadAttention(4, 2, batch_first=True)))
    model.register_buffer("mask", torch.randn(3, 3))
    model.call = {"attn_mask": model.mask}
    # q, k, v projections: 3 tokens x 4 rows x 4 (144 products, 144 adds with the bias); scale
    # 3*4 = 12; 2 heads x 3 x 3 = 18 scores of depth 2 (36, 18); the mask (18 adds); softmax
    # (36, 18); 12 outputs of 3 terms (36, 24); the returned weights averaged over the heads
    # (9 divisions, 9 adds); output projection (48, 48).
    params = 48 + 12 + 16 + 4 + 9  # and the 3x3 mask buffer
    mults = 144 + 12 + 36 + 36 + 36 + 9 + 48
    adds = 144 + 18 + 18 + 18 + 24 + 9 + 48
    assert score(model, (3, 4)) == (params, mults, adds)


def test_multihead_attention_with_extra_keys_and_own_key_size_by_hand() -> None:
    attention = nn.MultiheadAttention(4, 2, batch_first=True, add_bias_kv=True,
                                      add_zero_attn=True, kdim=6, vdim=6)
    model = WithMultiheadAttention(ones(attention), need_weights=False)
    # q: 3 x 4 rows x 4 (48, 48); k and v: 3 x 4 rows x 6 (72, 72) each; keys: 3 + bias_k +
    # a zero key = 5; scale 12; 30 scores of depth 2 (60, 30); softmax (60, 30); 12 outputs of
    # 5 terms (60, 48); output projection (48, 48).
    params = 16 + 24 + 24 + 12 + 4 + 4 + 16 + 4
    mults = 48 + 72 + 72 + 12 + 60 + 60 + 60 + 48
    adds = 48 + 72 + 72 + 30 + 30 + 48 + 48
    assert score(model, (3, 4)) == (params, mults, adds)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_counts_the_same_as_its_export(need_weights: bool) -> None:
    """Exported, the layer is the linear, attention, bmm and mean ops torch runs: an independent
    count of the same arithmetic."""
    attention = nn.MultiheadAttention(4, 2, batch_first=True, add_bias_kv=True)
    model = WithMultiheadAttention(ones(attention), need_weights=need_weights)
    assert figures(exported(model, (3, 4))) == score(model, (3, 4))


# --- einsum -------------------------------------------------------------------------------


@pytest.mark.parametrize(("terms", "output", "shapes", "expected"), [
    (["ij", "jk"], ["i", "k"], [(3, 4), (4, 5)], EinsumCount(60, 0, 45)),
    (["ij", "jk"], None, [(3, 4), (4, 5)], EinsumCount(60, 0, 45)),  # implicit "ik"
    # k only in the second operand: summed first (20 - 4 adds), then 3x4 products, 12 - 3 adds.
    (["ij", "jk"], ["i"], [(3, 4), (4, 5)], EinsumCount(12, 16, 9)),
    (["ij", "ij"], ["i", "j"], [(1, 4), (3, 4)], EinsumCount(12, 0, 0)),  # broadcast product
    (["\0ij", "\0kj"], ["\0", "i", "k"], [(2, 3, 4), (2, 3, 4)], EinsumCount(72, 0, 54)),
    (["ii"], [], [(3, 3)], EinsumCount(0, 2, 0)),  # trace: a diagonal, then 3 - 1 adds
    (["ij"], ["j", "i"], [(3, 4)], EinsumCount(0, 0, 0)),  # transpose: free
    (["bij"], ["b", "j"], [(2, 3, 4)], EinsumCount(0, 16, 0)),  # 24 values into 8
    (["ij", "jk", "kl"], ["i", "l"], [(2, 2), (2, 2), (2, 2)], None),  # order decides
    (["ij", "jk"], ["i", "k"], [(3, 4), (4, 5, 6)], None),  # shapes do not fit
])
def test_einsum_arithmetic(terms: list[str], output: list[str] | None,
                           shapes: list[tuple[int, ...]], expected: EinsumCount | None) -> None:
    assert einsum_count([list(t) for t in terms], output, shapes) == expected


@pytest.mark.parametrize("spelling", [
    lambda x: torch.einsum("bij,bkj->bik", x, x),
    lambda x: torch.einsum("bij,bkj->bik", [x, x]),
    lambda x: torch.einsum("...ij,...kj->...ik", x, x),
    lambda x: torch.einsum(x, [0, 1, 2], x, [0, 3, 2], [0, 1, 3]),
])
def test_einsum_spellings_by_hand(spelling: object) -> None:
    # 3x3 outputs of 4-long dot products: 36 products, 27 adds.
    assert score(Call(spelling), (3, 4)) == (0, 36, 27)


def test_einsum_counts_the_same_in_every_ir() -> None:
    model = Call(lambda x: torch.einsum("bij,bkj->bik", x, x))
    assert figures(exported(model, (3, 4))) == (0, 36, 27)
    assert figures(exported(model, (3, 4), core=True)) == (0, 36, 27)  # a bmm


def test_einsum_with_a_stored_operand_and_three_operands() -> None:
    class Project(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bij,jk->bik", x, self.weight)

    # 3x5 outputs of 4 products (60, 45 adds); the 20 weights stored once, counted dense.
    assert score(Project(), (3, 4)) == (20, 60, 45)
    three = Call(lambda x: torch.einsum("bij,bjk,bkl->bil", x, x, x))
    report = score_model(three, input_shape=(4, 4), freebie=False)
    assert [u.target for u in report.uncounted] == ["einsum"]


# --- torchvision Swin ---------------------------------------------------------------------


def swin_attention(shift: int, version: int = 1) -> nn.Module:
    from torchvision.models.swin_transformer import (
        ShiftedWindowAttention,
        ShiftedWindowAttentionV2,
    )

    cls = ShiftedWindowAttentionV2 if version == 2 else ShiftedWindowAttention
    model: nn.Module = cls(8, [2, 2], [shift, shift], num_heads=2)
    return model.eval()


# A 4x4 map of 8 channels in 2x2 windows: 4 windows of T = 4 tokens, 16 positions, 2 heads of
# depth 4, 128 scores. qkv: 16 x 24 rows x 8 (3072, 3072); proj: 16 x 8 x 8 (1024, 1024);
# q scale 128; scores (512, 384); bias add 128; softmax (256, 128); 128 outputs of 4 terms
# (512, 384). Shifted: the mask, 2 comparisons and 1 difference per window entry (128, 64),
# and its add (128).
SWIN = (3072 + 1024 + 128 + 512 + 256 + 512, 3072 + 1024 + 384 + 128 + 128 + 384)
SHIFT = (128, 64 + 128)


@pytest.mark.parametrize(("shift", "shape", "expected"), [
    (0, (4, 4, 8), SWIN),
    (1, (4, 4, 8), (SWIN[0] + SHIFT[0], SWIN[1] + SHIFT[1])),
    (1, (3, 3, 8), (SWIN[0] + SHIFT[0], SWIN[1] + SHIFT[1])),  # padded to 4x4
])
def test_shifted_window_attention_by_hand(shift: int, shape: tuple[int, ...],
                                          expected: tuple[int, int]) -> None:
    report = score_model(swin_attention(shift), input_shape=shape, freebie=False)
    # Stored: qkv 192 + 24, proj 64 + 8, the 3x3x2 bias table, and the 16 int64 indices.
    assert figures(report) == (192 + 24 + 64 + 8 + 18 + 16 * 2, *expected)
    row = layers_of(report, "shifted_window_attention")[0]
    assert (row.mults, row.adds) == expected


def test_swin_v2_cosine_window_attention_by_hand() -> None:
    report = score_model(swin_attention(1, version=2), input_shape=(4, 4, 8), freebie=False)
    row = layers_of(report, "shifted_window_attention")[0]
    # No q scale; q and k normalized: 64 vectors of 4 (10 products, 3 adds each); logit_scale
    # clamped and exponentiated (2 x 2 values) and multiplied into the 128 scores.
    mults = SWIN[0] - 128 + 640 + 4 + 128 + SHIFT[0]
    adds = SWIN[1] + 192 + SHIFT[1]
    assert (row.mults, row.adds) == (mults, adds)


def test_wrapped_functions_are_known_when_the_table_is_first_read_during_a_trace() -> None:
    """The symbolic tracer replaces `torch.fx.wrap`-ped functions by patches while it runs; a
    table first resolved then must still know the functions the graph calls."""
    register_op(OpSpec("test_reset", {"micronet": "builtins:len"}))
    unregister_op("test_reset")  # the lookup tables are rebuilt on next use: inside the trace
    report = score_model(First(swin_attention(1)), input_shape=(4, 4, 8), freebie=False)
    assert report.uncounted == ()
    assert len(layers_of(report, "shifted_window_attention")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_torchvision_swin_is_fully_counted(name: str) -> None:
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, name)()
    report = score_model(model, input_shape=(3, 224, 224), freebie=False)
    assert report.uncounted == ()
    assert len(layers_of(report, "shifted_window_attention")) == 12


# --- autocast -----------------------------------------------------------------------------


def test_autocast_bookkeeping_nodes_are_free() -> None:
    """A graph from dynamo keeps `_enter_autocast` / `_exit_autocast` calls around the region."""
    from torch.amp.autocast_mode import _enter_autocast, _exit_autocast

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    region = graph.call_function(_enter_autocast, ("cpu", torch.bfloat16, True, None))
    out = graph.call_function(F.scaled_dot_product_attention, (x, x, x))
    graph.call_function(_exit_autocast, (region,))
    graph.output(out)
    report = score_model(torch.fx.GraphModule(nn.Module(), graph), input_shape=(2, 5, 4),
                         freebie=False)
    assert report.uncounted == ()
    assert [row.op for row in report.layers] == ["scaled_dot_product_attention"]
