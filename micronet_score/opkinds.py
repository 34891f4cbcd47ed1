"""The vocabulary of operation kinds that formulas, rule files and reports share.

Kept free of torch so that rule files can be validated (and `--help` answered) without importing it.
"""

from __future__ import annotations

from enum import Enum


class OpKind(str, Enum):
    """What a graph node computes, independent of how it was written (module, function, aten op)."""

    CONV = "conv"
    CONV_TRANSPOSE = "conv_transpose"
    LINEAR = "linear"
    MATMUL = "matmul"
    BATCH_NORM = "batch_norm"
    LAYER_NORM = "layer_norm"
    GROUP_NORM = "group_norm"
    EMBEDDING = "embedding"
    ATTENTION = "scaled_dot_product_attention"
    MULTIHEAD_ATTENTION = "multihead_attention"
    LSTM = "lstm"
    AVG_POOL = "avg_pool"
    ADAPTIVE_AVG_POOL = "adaptive_avg_pool"
    MAX_POOL = "max_pool"
    ADAPTIVE_MAX_POOL = "adaptive_max_pool"
    MEAN = "mean"
    SUM = "sum"
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    RELU = "relu"
    RELU6 = "relu6"
    HARDTANH = "hardtanh"
    SIGMOID = "sigmoid"
    SILU = "silu"
    HARDSWISH = "hardswish"
    HARDSIGMOID = "hardsigmoid"
    GELU = "gelu"
    TANH = "tanh"
    LEAKY_RELU = "leaky_relu"
    ELU = "elu"
    SOFTMAX = "softmax"
    LOG_SOFTMAX = "log_softmax"
    # Moves or relabels data without arithmetic: cat, views, dropout in eval, casts.
    FREE = "free"
    # Quantizes, dequantizes or fake-quantizes values: no arithmetic counted, but it bounds the
    # width of the values and may store a scale and a zero point.
    QUANTIZE = "quantize"
    # An observer of a prepared, not yet converted, model: a state we refuse to score.
    OBSERVER = "observer"
    # A parameter or buffer read directly by the graph rather than through a counted layer.
    PARAMETER = "parameter"


ACTIVATIONS: frozenset[OpKind] = frozenset(
    {
        OpKind.RELU,
        OpKind.RELU6,
        OpKind.HARDTANH,
        OpKind.SIGMOID,
        OpKind.SILU,
        OpKind.HARDSWISH,
        OpKind.HARDSIGMOID,
        OpKind.GELU,
        OpKind.TANH,
        OpKind.LEAKY_RELU,
        OpKind.ELU,
        OpKind.SOFTMAX,
        OpKind.LOG_SOFTMAX,
    }
)

# Kinds whose output has the input's shape and dtype: shape propagation can skip running them.
SHAPE_PRESERVING: frozenset[OpKind] = ACTIVATIONS | {
    OpKind.BATCH_NORM,
    OpKind.LAYER_NORM,
    OpKind.GROUP_NORM,
}

# Named formula variants a rule file may choose per op kind, and the kinds each one covers.
# The default for every kind is "micronet".
FORMULA_VARIANTS: dict[str, frozenset[OpKind]] = {
    "imt_2022": frozenset({OpKind.CONV, OpKind.LINEAR, OpKind.AVG_POOL}),
    "macs": frozenset({OpKind.CONV, OpKind.LINEAR}),
}
