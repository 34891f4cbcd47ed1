"""Built-in op specs: recurrent layers, attention, einsum and the attention helpers torchvision
wraps for symbolic tracing. Strings only: see `micronet_score.ops.spec`; the formulas and their
counts are in `micronet_score.ops.formulas_sequence`.

In a plain `torch.export` program nn.LSTM / GRU / RNN and their cells are one aten op each
(`aten::lstm`, `aten::gru_cell`, ...) and scaled-dot-product attention is
`aten::scaled_dot_product_attention`; the core-ATen IR decomposes all of them into matrix
products and element-wise ops, counted by the core table. torchvision's Swin helpers are
`torch.fx.wrap`-ped, so they are single nodes only in a symbolic trace.
"""

from __future__ import annotations

from micronet_score.ops.spec import OpSpec, Trait

T = Trait
_FORMULAS = "micronet_score.ops.formulas_sequence:"
_SWIN = "torchvision.models.swin_transformer."
_RECURRENT_ATTRIBUTES = ("batch_first", "bias", "nonlinearity")


def _aten(*names: str) -> tuple[str, ...]:
    return tuple(f"aten::{name}" for name in names)


def _recurrent(kind: str, module: str, ops: tuple[str, ...], description: str) -> OpSpec:
    return OpSpec(
        kind, {"micronet": _FORMULAS + "recurrent"}, modules=(f"torch.nn.{module}",),
        ops=_aten(*ops), traits=frozenset({T.COMPOSITE}), attributes=_RECURRENT_ATTRIBUTES,
        description=description,
    )


_PROJECTIONS = ("per step: the input and hidden projections as linear layers (zeros skipped), "
                "their sum per gate, then ")

SPECS: tuple[OpSpec, ...] = (
    _recurrent("lstm", "LSTM", ("lstm",), _PROJECTIONS + "3 sigmoids, 2 tanh, 3 products "
               "and 1 add per hidden unit; a projected LSTM adds its W_hr projection"),
    _recurrent("gru", "GRU", ("gru",), _PROJECTIONS + "2 sigmoids, 1 tanh, 2 products and "
               "2 adds per hidden unit (r*(W_hn h + b_hn), h' = n + z*(h - n))"),
    _recurrent("rnn", "RNN", ("rnn_tanh", "rnn_relu"),
               _PROJECTIONS + "one tanh or relu per hidden unit"),
    _recurrent("lstm_cell", "LSTMCell", ("lstm_cell",), "one LSTM step"),
    _recurrent("gru_cell", "GRUCell", ("gru_cell",), "one GRU step"),
    _recurrent("rnn_cell", "RNNCell", ("rnn_tanh_cell", "rnn_relu_cell"), "one RNN step"),
    OpSpec(
        "scaled_dot_product_attention",
        {"micronet": _FORMULAS + "attention"},
        functions=("torch.nn.functional.scaled_dot_product_attention",),
        ops=_aten("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                  "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
                  "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math"),
        description="one product per query element for the scale, q.k dot products per score, "
        "one add per score for an additive mask, the softmax per score, and weights.v dot "
        "products per output",
    ),
    OpSpec(
        "multihead_attention",
        {"micronet": _FORMULAS + "multihead_attention"},
        modules=("torch.nn.MultiheadAttention",),
        traits=frozenset({T.COMPOSITE}),
        attributes=("num_heads", "batch_first", "add_zero_attn"),
        description="the q, k, v and output projections as linear layers, scaled-dot-product "
        "attention per head, and the mean of the attention weights over heads when returned",
    ),
    OpSpec(
        "einsum",
        {"micronet": "micronet_score.ops.formulas_einsum:einsum"},
        functions=("torch.einsum",),
        ops=_aten("einsum"),
        description="1 operand: its sums; 2 operands: one product per combination of label "
        "values and products - outputs adds, after summing labels one operand has alone; "
        "3 or more operands: uncounted (the contraction order decides)",
    ),
    OpSpec(
        "shifted_window_attention",
        {"micronet": _FORMULAS + "shifted_window_attention"},
        functions=(_SWIN + "shifted_window_attention",),
        attributes=("window_size", "shift_size", "num_heads"),
        description="torchvision Swin window attention: qkv and output projections as linear "
        "layers, q scaling (v1) or cosine similarity with a logit scale (v2), per window and "
        "head the scores, relative position bias add, shift-mask build and add, softmax and v",
    ),
    OpSpec(
        "relative_position_bias",
        {"micronet": _FORMULAS + "gather"},
        functions=(_SWIN + "_get_relative_position_bias",),
        description="a gather from a stored table: no arithmetic; the table and index stored",
    ),
    OpSpec(
        "window_data_movement",
        {"micronet": _FORMULAS + "no_arithmetic"},
        functions=(_SWIN + "_patch_merging_pad",),
        traits=frozenset({T.FREE}),
        description="torchvision Swin patch merging's pad, strided slices and cat: free",
    ),
    OpSpec(
        "masked_scores",
        {"micronet": _FORMULAS + "masked_add"},
        functions=("timm.layers.attention.maybe_add_mask",),
        description="timm's optional attention mask: one add per score when a mask is given",
    ),
    OpSpec(
        "attention_mask",
        {"micronet": _FORMULAS + "no_arithmetic"},
        functions=("timm.layers.attention.resolve_self_attn_mask",),
        traits=frozenset({T.FREE}),
        description="timm building an additive mask from a causal flag or a boolean mask: "
        "fills and selections, free",
    ),
    OpSpec(
        "autocast",
        {"micronet": _FORMULAS + "no_arithmetic"},
        functions=("torch.amp.autocast_mode._enter_autocast",
                   "torch.amp.autocast_mode._exit_autocast"),
        traits=frozenset({T.FREE}),
        description="entering or leaving an autocast region: bookkeeping, free",
    ),
)
