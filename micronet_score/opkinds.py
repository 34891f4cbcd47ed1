"""Names of the op kinds the engine itself refers to, and the views of the op table that rule
files are checked against.

The full list of kinds, with their spellings, traits and formulas, is the op table
(`micronet_score.ops.spec`); this module only names the built-in kinds that code outside a formula
mentions. Kept free of torch so that rule files can be validated (and `--help` answered) without
importing it.
"""

from __future__ import annotations

from typing import Final


class OpKind:
    """Built-in kind names (plain strings, equal to the `kind` of their spec)."""

    CONV: Final = "conv"
    CONV_TRANSPOSE: Final = "conv_transpose"
    LINEAR: Final = "linear"
    ADDMM: Final = "addmm"
    MATMUL: Final = "matmul"
    BATCH_NORM: Final = "batch_norm"
    LAYER_NORM: Final = "layer_norm"
    GROUP_NORM: Final = "group_norm"
    EMBEDDING: Final = "embedding"
    AVG_POOL: Final = "avg_pool"
    ADAPTIVE_AVG_POOL: Final = "adaptive_avg_pool"
    MAX_POOL: Final = "max_pool"
    ADAPTIVE_MAX_POOL: Final = "adaptive_max_pool"
    MEAN: Final = "mean"
    SUM: Final = "sum"
    RELU: Final = "relu"
    SIGMOID: Final = "sigmoid"
    TANH: Final = "tanh"
    SOFTMAX: Final = "softmax"
    # Moves or relabels data without arithmetic: cat, views, dropout in eval, casts.
    FREE: Final = "free"
    # Quantizes, dequantizes or fake-quantizes values: no arithmetic counted, but it bounds the
    # width of the values and may store a scale and a zero point.
    QUANTIZE: Final = "quantize"
    # An observer of a prepared, not yet converted, model: a state we refuse to score.
    OBSERVER: Final = "observer"
    # A stored tensor read directly by the graph rather than through a counted layer.
    PARAMETER: Final = "parameter"
    # A non-learned buffer read directly by the graph (an index table, a mask, a constant).
    BUFFER: Final = "buffer"


def all_kinds() -> tuple[str, ...]:
    from micronet_score.ops.spec import all_specs

    return tuple(spec.kind for spec in all_specs())


def activation_kinds() -> frozenset[str]:
    """Kinds whose per-element cost a rule file's `activations` table gives."""
    from micronet_score.ops.spec import Trait, builtin_kinds_with

    return builtin_kinds_with(Trait.ACTIVATION)


def formula_variants(kind: str) -> tuple[str, ...]:
    """The formula variants a rule file may choose for `kind`; empty for an unknown kind."""
    from micronet_score.ops.spec import spec_of, variants

    try:
        spec_of(kind)
    except KeyError:
        return ()
    return variants(kind)
