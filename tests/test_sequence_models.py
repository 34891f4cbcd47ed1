"""Transformer and sequence layers, meta-device models, and counts that grow linearly."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import layer
from torch import nn

from micronet_score import api, score_model
from micronet_score.results import Report


def ones(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    return model.eval()


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


def test_multihead_attention_by_hand() -> None:
    report = score_model(ones(SelfAttention()), input_shape=(3, 4), freebie=False)
    row = layer(report, "attention")
    # q, k, v projections: 3 tokens x 4 outputs x 4-long dot products, plus a bias add each.
    projections = (3 * 48, 3 * (36 + 12))
    # 2 heads of depth 2, 3 x 3 scores per head (18): q.k 18x2 mults and 18x1 adds, the scale
    # once per query element (3 tokens x 4), softmax 2 mults + 1 add per score, then 2x3
    # outputs of depth 2 summing 3 values.
    attention = (18 * 2 + 12 + 2 * 18 + 2 * 3 * 2 * 3, 18 * 1 + 18 + 2 * 3 * 2 * 2)
    output = (48, 36 + 12)
    assert row.mults == projections[0] + attention[0] + output[0]
    assert row.adds == projections[1] + attention[1] + output[1]
    assert row.params == 48 + 12 + 16 + 4


def test_lstm_by_hand() -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 3, num_layers=2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x)[0]

    report = score_model(ones(Recurrent()), input_shape=(5, 4), freebie=False)
    row = layer(report, "lstm")
    hidden = 3
    # gates: 3 sigmoids (2 mults, 1 add), 2 tanh (1 mult), cell and output updates (3 mults,
    # 1 add): per step and layer 3*3*2 + 2*3 + 9 = 33 mults and 9 + 3 = 12 adds.
    gates = (33, 12)
    # layer 0: 12x4 input and 12x3 recurrent weights; layer 1: 12x3 and 12x3. Adds: the two
    # dot products' accumulations, then 3 adds per gate (the two products and two biases).
    layer0 = (48 + 36 + gates[0], (48 - 12) + (36 - 12) + 4 * hidden * 3 + gates[1])
    layer1 = (36 + 36 + gates[0], (36 - 12) + (36 - 12) + 4 * hidden * 3 + gates[1])
    steps = 5
    assert row.mults == steps * (layer0[0] + layer1[0])
    assert row.adds == steps * (layer0[1] + layer1[1])
    assert row.params == (48 + 36 + 24) + (36 + 36 + 24)


def test_embedding_with_token_ids() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(10, 4)
            self.linear = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(self.embedding(x))

    report = score_model(ones(Tokens()), input_shape=(5,), input_dtype=torch.long,
                         freebie=False)
    assert (layer(report, "embedding").params, layer(report, "embedding").mults) == (40, 0)
    # 5 tokens x 2 outputs: 4 mults, 3 accumulations and a bias add each.
    assert (layer(report, "linear").mults, layer(report, "linear").adds) == (40, 40)
    assert layer(report, "linear").act_bits == 32  # token ids carry no activation width


def test_transformer_ops_in_functional_form() -> None:
    def block(x: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(x, x.transpose(1, 2)).softmax(-1)
        return F.gelu(F.layer_norm(torch.matmul(scores, x), (4,)))

    class Block(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return block(x)

    report = score_model(Block(), input_shape=(3, 4), freebie=False)
    ops = [(row.op, row.mults, row.adds) for row in report.layers]
    assert ops == [
        ("matmul", 9 * 4, 9 * 3),  # 3x3 scores of length 4
        ("softmax", 9 * 2, 9 * 1),
        ("matmul", 12 * 3, 12 * 2),  # 3x4 outputs summing 3 terms
        ("layer_norm", 2 * 12 + 3 * 3, 3 * 12 + 3),  # no affine
        ("gelu", 12 * 4, 12 * 1),
    ]
    assert report.uncounted == ()


def conv_chain(blocks: int, device: str = "cpu") -> nn.Module:
    with torch.device(device):
        return nn.Sequential(*[
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            for _ in range(blocks)
        ]).eval()


def test_meta_device_model_scores_as_dense() -> None:
    real = score_model(ones(conv_chain(3)), input_shape=(4, 8, 8), freebie=False)
    meta = score_model(conv_chain(3, "meta"), input_shape=(4, 8, 8), freebie=False)
    assert (meta.params, meta.ops) == (real.params, real.ops)
    assert "meta device" in " ".join(meta.warnings)


def test_counts_grow_linearly_with_the_graph() -> None:
    # A block: conv (36-long dot products + folded bias at 4x8x8 outputs) and a relu.
    per_block_ops = 256 * 36 + 256 * 36 + 256
    per_block_params = 4 * 36 + 4
    for blocks in (1, 10, 80):
        report = score_model(ones(conv_chain(blocks)), input_shape=(4, 8, 8), freebie=False)
        assert report.ops == blocks * per_block_ops
        assert report.params == blocks * per_block_params
        assert len(report.layers) == 3 * blocks


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_garbage_collector_pauses_only_while_scoring(
    enabled_before: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Collections during the analysis made it grow faster than the graph (see api.py).
    seen: list[bool] = []
    original = api.summarize

    def summarize(*args: Any, **kwargs: Any) -> Report:
        seen.append(gc.isenabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(api, "summarize", summarize)
    (gc.enable if enabled_before else gc.disable)()
    try:
        score_model(conv_chain(2), input_shape=(4, 8, 8))
        assert (seen, gc.isenabled()) == ([False], enabled_before)
    finally:
        gc.enable()


def test_vision_transformer_has_no_uncounted_op() -> None:
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.vit_b_16()
    report = score_model(model, input_shape=(3, 224, 224), freebie=False)
    assert report.uncounted == ()
    assert report.trace_method == "symbolic_trace"
    ops = {row.op for row in report.layers}
    assert {"multihead_attention", "layer_norm", "gelu", "linear", "conv"} <= ops
    # Dense ViT-B/16: 86,567,656 values.
    assert report.params == 86_567_656


@pytest.mark.parametrize("spelling", ["module", "function"])
def test_stochastic_depth_is_the_identity_at_inference(spelling: str) -> None:
    """torchvision's StochasticDepth (efficientnet, convnext, swin) returns its input in eval
    mode: free, not uncounted (it made --strict fail on efficientnet_b0 and convnext_tiny)."""
    from torchvision.ops import StochasticDepth, stochastic_depth

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop = StochasticDepth(0.2, "row")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            y = self.drop(y) if spelling == "module" else stochastic_depth(y, 0.2, "row", False)
            return x + y

    report = score_model(Block().eval(), input_shape=(4,), freebie=False)
    assert report.uncounted == ()
    # linear: 16 mults, 12 + 4 adds; the residual add: 4 adds; stochastic depth: nothing.
    assert (report.mults, report.adds) == (16, 12 + 4 + 4)
