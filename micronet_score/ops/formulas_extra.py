"""Formulas of the extra op kinds: element-wise math, reductions, resampling and normalizations.

Conventions (the rules text): a transcendental function (exp, log, erf, sqrt, rsqrt, sin) is one
product; a division or a reciprocal is a product; an element-wise comparison (gt, maximum, abs,
clamp against one bound) is one product, as relu is in the official counter; a comparison inside
a reduction (amax, argmax) is counted as an add, as in max pooling; a negation flips a sign bit
and is free. Where torch's core-ATen decomposition spells an op as smaller ops, the count here is
the sum of theirs, so a module, its export and its core-ATen program give the same figures.

The pure helpers (`pow_products`, `vector_norm_counts`, `interpolation_counts`, `antialias_taps`,
`fold_counts`) hold the arithmetic and take plain numbers; the formulas read a node's facts.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.fx

from micronet_score.ops.cost import FormulaContext, NodeCost, Ops, Stored

if TYPE_CHECKING:
    from micronet_score.facts import NodeFacts, Operand

# Products of a general power x**p: log, product, exp.
GENERAL_POWER_PRODUCTS = 3


# ---------------------------------------------------------------- pure arithmetic


def pow_products(exponent: float | None, *, tensor_base: bool = True) -> int:
    """Products per element of `base ** exponent`.

    `exponent` is None for a tensor exponent. Integer exponent k >= 2: square-and-multiply,
    bit_length(k) - 1 squarings and popcount(k) - 1 products (2 -> 1, 3 -> 2, 4 -> 2); a negative
    integer adds one reciprocal; 1 and 0 are free (identity, constant); 0.5 / -0.5 are one sqrt /
    rsqrt; any other exponent, or a tensor exponent, is exp(p * log x): 3. A scalar base with a
    tensor exponent (`2 ** x`) is exp(x * log b): 2 (log b is a constant).
    """
    if not tensor_base:
        return 2
    if exponent is None:
        return GENERAL_POWER_PRODUCTS
    if exponent in (0.5, -0.5):
        return 1
    if float(exponent).is_integer():
        k = abs(int(exponent))
        if k <= 1:
            return 0 if exponent >= 0 else 1  # x**1, x**0 free; x**-1 is a reciprocal
        chain = k.bit_length() - 1 + bin(k).count("1") - 1
        return chain + (1 if exponent < 0 else 0)
    return GENERAL_POWER_PRODUCTS


def vector_norm_counts(n: int, outputs: int, order: float) -> tuple[int, int]:
    """(mults, adds) of `outputs` p-norms of n values each.

    Per element: |x| (a comparison, skipped for an even integer order) and x**p (`pow_products`);
    per output: n - 1 adds and the root x**(1/p). Infinite orders: |x| per element and n - 1
    comparisons (adds, as max pooling) per output. Order 0 (count of non-zeros): one comparison
    per element, n - 1 adds per output. p = 2: n products, n - 1 adds and one sqrt per output.
    """
    elements = n * outputs
    if math.isinf(order):
        return elements, elements - outputs
    if order == 0:
        return elements, elements - outputs
    even = float(order).is_integer() and int(order) % 2 == 0
    per_element = (0 if even else 1) + pow_products(order)
    return per_element * elements + pow_products(1 / order) * outputs, elements - outputs


def interpolation_counts(mode: str, spatial: int) -> tuple[int, int]:
    """(mults, adds) per output element of a resampling without antialiasing.

    nearest / nearest-exact: a copy (0, 0). linear, bilinear, trilinear (d = 1, 2, 3 dims):
    2**d - 1 linear interpolations a + w * (b - a), each 1 product and 2 adds; core-ATen's
    decomposition of upsample_linear1d and upsample_trilinear3d computes exactly these. bicubic:
    4 row cubic convolutions of 4 taps then one along the column, each 4 products and 3 adds
    (20 and 15), as core-ATen's decomposition of upsample_bicubic2d. Raises ValueError for
    another mode.
    """
    if mode in ("nearest", "nearest-exact"):
        return 0, 0
    if mode in ("linear", "bilinear", "trilinear"):
        lerps = 2**spatial - 1
        return lerps, 2 * lerps
    if mode == "bicubic":
        convolutions = sum(4**i for i in range(spatial))
        return 4 * convolutions, 3 * convolutions
    raise ValueError(f"no count for interpolation mode {mode!r}")


def _f32(value: float) -> float:
    """`value` rounded to float32, as the kernel computes its window bounds."""
    rounded: float = struct.unpack("f", struct.pack("f", value))[0]
    return rounded


def antialias_taps(size_in: int, size_out: int, scale: float, interp_size: int) -> int:
    """Input values read by all `size_out` outputs of one antialiased resampling pass.

    PyTorch's separable antialias kernel (bilinear: interp_size 2, bicubic: 4) widens the filter
    support to interp_size / 2 * scale when downsampling; output i reads the input range
    [max(int(c - s + 0.5), 0), min(int(c + s + 0.5), size_in)) with c = scale * (i + 0.5), at
    most ceil(s) * 2 + 1 values. Each value read is one product; the sum of k of them k - 1 adds.
    """
    support = interp_size * 0.5 * (scale if scale >= 1.0 else 1.0)
    support = _f32(support)
    widest = math.ceil(support) * 2 + 1
    total = 0
    for i in range(size_out):
        center = _f32(scale * (i + 0.5))
        low = max(int(_f32(center - support) + 0.5), 0)
        high = min(int(_f32(center + support) + 0.5), size_in)
        total += min(max(high - low, 0), widest)
    return total


def resize_scale(size_in: int, size_out: int, align_corners: bool, scale: float | None) -> float:
    """Input distance between neighbouring outputs, as PyTorch computes it for resampling."""
    if align_corners:
        return (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    if scale is not None and scale > 0:
        return 1.0 / scale
    return size_in / size_out


def fold_counts(
    channels: int, output_size: Sequence[int], kernel: Sequence[int], dilation: Sequence[int],
    padding: Sequence[int], stride: Sequence[int],
) -> tuple[int, int]:
    """(values landing in the output, adds) of nn.Fold (col2im): every block value lands on one
    output position unless it falls in the padding; an output receiving k values takes k - 1
    adds (none when it receives none), as the transposed conv convention."""
    per_dim: list[list[int]] = []
    for size, k, d, p, s in zip(output_size, kernel, dilation, padding, stride, strict=True):
        blocks = (size + 2 * p - d * (k - 1) - 1) // s + 1
        hits = [0] * size
        for block in range(blocks):
            for tap in range(k):
                position = block * s - p + tap * d
                if 0 <= position < size:
                    hits[position] += 1
        per_dim.append(hits)
    landing = channels * math.prod(sum(hits) for hits in per_dim)
    covered = channels * math.prod(sum(1 for h in hits if h) for hits in per_dim)
    return landing, landing - covered


# ---------------------------------------------------------------- reading facts


def _out(facts: NodeFacts) -> int:
    assert facts.output is not None, f"{facts.node.name} has no tensor output"
    return facts.output.numel


def _argument(facts: NodeFacts, names: Sequence[str], position: int | None,
              default: object = None) -> object:
    """A call's argument by one of its names (the bound arguments, then the spec's attributes,
    then the node's keywords) or, failing those, by position in the call."""
    for source in (facts.args, facts.attributes, facts.node.kwargs):
        for name in names:
            if name in source:
                return source[name]
    if position is not None and facts.node.op != "call_module" and len(facts.node.args) > position:
        return facts.node.args[position]
    return default


def _number(value: object) -> float | None:
    """A Python number argument, or None for a tensor (graph node) or a missing one."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _op_name(facts: NodeFacts) -> str:
    """The dispatcher op's name (`upsample_bilinear2d`), or the function / method name."""
    target = facts.node.target
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        packet = target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target
        return str(packet._qualified_op_name.partition("::")[2])
    if isinstance(target, str):
        return target
    return str(getattr(target, "__name__", target))


def _overload(facts: NodeFacts) -> str:
    target = facts.node.target
    return str(target._overloadname) if isinstance(target, torch._ops.OpOverload) else ""


def _elementwise(mults: float, adds: float, ctx: FormulaContext) -> NodeCost:
    width = ctx.bits.act
    return NodeCost(Ops.at(mults, width, adds, ctx.add_bits(width)))


def _reduced(facts: NodeFacts) -> tuple[int, int]:
    """(values in, outputs) of a reduction: n - 1 operations per output."""
    return facts.inputs[0].numel, _out(facts)


def _stored(operand: Operand, ctx: FormulaContext) -> Stored:
    return Stored(operand.key, operand.identity, ctx.stats(operand), ctx.bits.weight or 32)


# ---------------------------------------------------------------- element-wise math


def one_product(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """One product per output element: a transcendental function, a reciprocal, a comparison
    (gt, abs, sign, maximum) or a rounding."""
    return _elementwise(_out(facts), 0, ctx)


def modulo(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """fmod / remainder: x - round(x / c) * c, 2 products (the rounding division, the product)
    and 1 add per output element."""
    elements = _out(facts)
    return _elementwise(2 * elements, elements, ctx)


def power(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Per output element, the products of `pow_products` (square: exponent 2)."""
    base = _argument(facts, ("self", "input", "a"), 0)
    default = 2 if _op_name(facts) == "square" else None
    exponent_arg = _argument(facts, ("exponent", "b"), 1, default)
    tensor_base = isinstance(base, torch.fx.Node)
    products = pow_products(_number(exponent_arg), tensor_base=tensor_base)
    return _elementwise(products * _out(facts), 0, ctx)


def clamp(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """One comparison (a product) per output element for each bound given; clamp_min and
    clamp_max have one."""
    name = _op_name(facts)
    if name.startswith(("clamp_min", "clamp_max")):
        bounds = 1
    else:
        low = _argument(facts, ("min",), 1)
        high = _argument(facts, ("max",), 2)
        bounds = (low is not None) + (high is not None)
    return _elementwise(bounds * _out(facts), 0, ctx)


def _binary(facts: NodeFacts) -> bool:
    """Whether a max/min call compares two tensors element-wise (rather than reducing one)."""
    if _op_name(facts) in ("maximum", "minimum", "fmax", "fmin"):
        return True
    if _overload(facts):
        return _overload(facts) == "other"
    other = _argument(facts, ("other",), 1)
    return isinstance(other, torch.fx.Node)


def max_min(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Element-wise (maximum, torch.max(a, b)): one comparison (a product) per output element.
    Reduction (amax, argmax, max over a dim, any): n - 1 comparisons per output (aminmax twice),
    counted as adds as in max pooling, so `amax` over the spatial dims costs what
    AdaptiveMaxPool2d(1) does."""
    if _binary(facts):
        return _elementwise(_out(facts), 0, ctx)
    values, outputs = _reduced(facts)
    both = 2 if _op_name(facts) == "aminmax" else 1  # the minimum and the maximum
    return _elementwise(0, both * (values - outputs), ctx)


def addcmul(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """input + value * t1 * t2 (addcdiv: t1 / t2): per output element the product (or
    quotient), the scale by `value` unless it is 1, and 1 add."""
    elements = _out(facts)
    value = _number(_argument(facts, ("value",), 3, 1))
    products = 1 if value == 1 else 2
    return _elementwise(products * elements, elements, ctx)


def lerp(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """start + w * (end - start): 1 product and 2 adds per output element. A tensor weight also
    picks, per element, the better-conditioned form (|w| < 0.5 ? start + w*d : end - (1-w)*d):
    |w|, a comparison and 1 - w add 2 products and 1 add (core-ATen's decomposition)."""
    elements = _out(facts)
    weight = _argument(facts, ("weight",), 2)
    if isinstance(weight, torch.fx.Node):
        return _elementwise(3 * elements, 3 * elements, ctx)
    return _elementwise(elements, 2 * elements, ctx)


# ---------------------------------------------------------------- reductions


def product_reduction(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """prod: n - 1 products per output of n values."""
    values, outputs = _reduced(facts)
    return _elementwise(values - outputs, 0, ctx)


def cumulative(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """cumsum / cumprod along a line of n values: n - 1 adds (products) per line. None when
    the dimension is not a number."""
    dim = _argument(facts, ("dim",), 1)
    shape = facts.inputs[0].shape
    if not shape:  # a single value: nothing to accumulate
        return _elementwise(0, 0, ctx)
    if not isinstance(dim, int):
        return None
    length = shape[dim]
    elements = facts.inputs[0].numel
    operations = elements - elements // length if length else 0
    if _op_name(facts).startswith("cumprod"):
        return _elementwise(operations, 0, ctx)
    return _elementwise(0, operations, ctx)


def variance(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """var over n values per output: the mean (n - 1 adds, 1 division), n centrings (adds),
    n squares, their sum (n - 1 adds) and the division by n - correction: n + 2 products and
    3n - 2 adds. std (and std_mean) add one sqrt per output; var_mean's mean is a by-product."""
    values, outputs = _reduced(facts)
    mults = values + 2 * outputs
    adds = 3 * values - 2 * outputs
    if _op_name(facts).startswith("std"):
        mults += outputs
    return _elementwise(mults, adds, ctx)


def logsumexp(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """log(sum(exp(x - m))) + m, m the maximum: per output of n values, n - 1 comparisons (adds),
    n subtractions, n exps, n - 1 adds, one log, one add, and the guard against an infinite
    maximum torch applies (|m| == inf: 2 comparisons): n + 3 products, 3n - 1 adds."""
    values, outputs = _reduced(facts)
    return _elementwise(values + 3 * outputs, 3 * values - outputs, ctx)


def _norm_order(facts: NodeFacts) -> float | None:
    """The order of a vector norm; None for a matrix norm (nuclear, spectral, ...)."""
    order = _argument(facts, ("ord", "p"), 1, None)
    if order is None or order == "fro":
        return 2.0
    if _op_name(facts) == "linalg_norm":
        dim = _argument(facts, ("dim",), 2)
        if isinstance(dim, list | tuple) and len(dim) == 2:
            return None  # linalg.norm over two dims with a number is a matrix norm
    return _number(order)


def vector_norm(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """A p-norm per output over the reduced values: `vector_norm_counts`. A matrix norm (nuclear,
    spectral) is not counted (None)."""
    order = _norm_order(facts)
    if order is None:
        return None
    values, outputs = _reduced(facts)
    mults, adds = vector_norm_counts(values // outputs, outputs, order)
    return _elementwise(mults, adds, ctx)


def normalize(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """F.normalize: the p-norm of each vector along `dim` (`vector_norm_counts`), its clamp to
    eps (one comparison per vector) and one division per element. p = 2: 2 products per element,
    2 per vector, n - 1 adds per vector."""
    order = _number(_argument(facts, ("p",), 1, 2.0))
    dim = _argument(facts, ("dim",), 2, 1)
    shape = facts.inputs[0].shape
    if order is None or not isinstance(dim, int) or not shape:
        return None
    elements = facts.inputs[0].numel
    length = shape[dim]
    vectors = elements // length
    mults, adds = vector_norm_counts(length, vectors, order)
    return _elementwise(mults + vectors + elements, adds, ctx)


# ---------------------------------------------------------------- resampling
