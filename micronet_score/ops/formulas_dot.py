"""Formulas of dot products over stored weights: conv, transposed conv, linear, addmm, matmul.

Conventions (official rules and `counting.py`): a dot product of n non-zero weights costs n
multiplications and n - 1 additions at the accumulator width, plus one addition for a bias; zero
weights are skipped (static weight sparsity); weights may be stored with a mask, biases always
dense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from micronet_score.bits import width
from micronet_score.facts import NodeFacts, Operand
from micronet_score.graph import TensorInfo
from micronet_score.opkinds import OpKind
from micronet_score.ops.cost import FormulaContext, NodeCost, Ops, Stored
from micronet_score.sparsity import WeightStats, dense_stats

K = OpKind


def out_elements(facts: NodeFacts) -> int:
    assert facts.output is not None, f"{facts.node.name} has no tensor output"
    return facts.output.numel


def stored(operand: Operand, stats: WeightStats, bits: int, maskable: bool = False) -> Stored:
    return Stored(operand.key, operand.identity, stats, bits, maskable)


def weight_stats(weight: Operand, ctx: FormulaContext) -> WeightStats:
    """Zeros of a weight as the formulas skip them (dense when the rules skip no zeros)."""
    stats = ctx.stats(weight)
    if not ctx.rules.sparsity.skip_zero_weights:
        stats = dense_stats(tuple(weight.tensor.shape), known=stats.known)
    return stats


def weights(facts: NodeFacts, ctx: FormulaContext) -> tuple[WeightStats, tuple[Stored, ...]]:
    """Zero structure of the weights and their storage.

    A weight computed in the forward pass (e.g. by a parametrization on the root module) is an
    activation here: counted dense, its stored sources charged where the graph reads them.
    """
    weight = facts.weight
    if weight is None:
        return dense_stats(facts.inputs[1].shape), ()
    stats = ctx.stats(weight)
    kept = (stored(weight, stats, ctx.bits.weight or 32, maskable=True),
            *weight_qparams(weight, ctx))
    return weight_stats(_as_rows(weight, used_as_second=False), ctx), kept


def weight_qparams(weight: Operand, ctx: FormulaContext) -> tuple[Stored, ...]:
    """A quantized weight also stores its scales (32 bits) and zero points (its own width),
    one pair per channel or one for the tensor; zero points that are all 0 (symmetric
    quantization) are implied by the scheme and cost nothing."""
    tensor = weight.tensor
    if not tensor.is_quantized:
        return ()
    per_channel = tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    zero_points = tensor.q_per_channel_zero_points() if per_channel else torch.tensor(
        [tensor.q_zero_point()]
    )
    values = dense_stats((zero_points.numel(),))
    scales = Stored(f"{weight.key}.scale", hash((weight.identity, "scale")), values, 32)
    if not zero_points.any():  # symmetric quantization: zero points are implied, not stored
        return (scales,)
    return (
        scales,
        Stored(f"{weight.key}.zero_point", hash((weight.identity, "zero_point")), values,
               ctx.bits.weight or 8),
    )


def bias_values(facts: NodeFacts, ctx: FormulaContext, bias: Operand | None = None
                ) -> tuple[Stored, ...]:
    """The bias values: the layer's own, or a folded BatchNorm shift (never both); dense."""
    bias = bias or facts.bias or ctx.folded_bias
    if bias is None:
        return ()
    bits = ctx.bits.stored(width(bias.tensor.dtype, bias.bits, ctx.rules.default_bits))
    return (stored(bias, dense_stats(tuple(bias.tensor.shape) or (1,)), bits),)


def dot_product(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Each output is a dot product over the non-zero weights of its channel, plus a bias add."""
    stats, kept = weights(facts, ctx)
    positions = out_elements(facts) // stats.channels
    mults = stats.nonzero * positions
    adds = (stats.nonzero - stats.nonzero_channels) * positions
    bias = bias_values(facts, ctx)
    if bias:
        adds += stats.channels * positions
    ops = Ops.at(mults, ctx.bits.mult, adds, ctx.accumulator_bits)
    return NodeCost(ops, (*kept, *bias))


def transposed_conv(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """Only the products that land inside the output count: a weight tap meets an input position
    only when their output position survives the padding crop. Per output element, the products
    landing in it minus one are additions (never negative), plus one for a bias.

    Exact for any stride, padding, dilation, output padding and groups: the products landing in
    each output are counted by a transposed convolution of ones with the weights' non-zero
    pattern (one small real convolution, at the layer's own size)."""
    weight = facts.weight
    if weight is None or facts.output is None or weight.tensor.device.type == "meta":
        return None if weight is None else _dense_transposed(facts, ctx)
    _, kept = weights(facts, ctx)
    pattern = weight.tensor.detach()
    pattern = pattern.dequantize() if pattern.is_quantized else pattern
    pattern = (pattern != 0).to(torch.float64)
    if not ctx.rules.sparsity.skip_zero_weights:
        pattern = torch.ones_like(pattern)
    landing = _landing(facts, pattern)
    if landing is None:
        return None
    mults = int(landing.sum())
    adds = mults - int(torch.count_nonzero(landing))
    bias = bias_values(facts, ctx)
    if bias:
        adds += out_elements(facts)
    return NodeCost(Ops.at(mults, ctx.bits.mult, adds, ctx.accumulator_bits), (*kept, *bias))


def _dense_transposed(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    weight = facts.weight
    assert weight is not None
    pattern = torch.ones(tuple(weight.tensor.shape), dtype=torch.float64)
    landing = _landing(facts, pattern)
    if landing is None:
        return None
    _, kept = weights(facts, ctx)
    mults = int(landing.sum())
    adds = mults - int(torch.count_nonzero(landing)) + (
        out_elements(facts) if bias_values(facts, ctx) else 0)
    return NodeCost(Ops.at(mults, ctx.bits.mult, adds, ctx.accumulator_bits),
                    (*kept, *bias_values(facts, ctx)))


def _landing(facts: NodeFacts, pattern: torch.Tensor) -> torch.Tensor | None:
    """Products landing in each output element, shape (C_out, *spatial)."""
    spatial = len(pattern.shape) - 2
    convolve = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}.get(spatial)
    x = facts.inputs[0]
    assert facts.output is not None
    if convolve is None or len(x.shape) != spatial + 2:
        return None
    settings = {name: _setting(facts.attributes.get(name), default, spatial)
                for name, default in (("stride", 1), ("padding", 0), ("dilation", 1),
                                      ("output_padding", 0))}
    groups = int(str(facts.attributes.get("groups", 1)))
    ones = torch.ones((1, x.shape[1], *x.shape[2:]), dtype=torch.float64)
    landing = convolve(ones, pattern, None, settings["stride"], settings["padding"],
                       settings["output_padding"], groups, settings["dilation"])[0]
    if tuple(landing.shape) != tuple(facts.output.shape[1:]):
        return None  # settings we could not read back: never guess
    return landing


def _setting(value: object, default: int, spatial: int) -> tuple[int, ...]:
    if value is None:
        return (default,) * spatial
    if isinstance(value, int):
        return (value,) * spatial
    assert isinstance(value, list | tuple)
    values = tuple(int(v) for v in value)
    return values * spatial if len(values) == 1 else values


def _as_rows(operand: Operand, used_as_second: bool) -> Operand:
    """The weight as (outputs, inputs), the layout whose rows are dot products: a matrix used as
    the second operand of x @ W is read column by column, unless it was stored transposed."""
    if used_as_second == operand.transposed or operand.tensor.dim() != 2:
        return operand
    return Operand(operand.key, hash((operand.identity, "T")), operand.tensor.t(), operand.bits)


def _stored_product(facts: NodeFacts, ctx: FormulaContext, weight: Operand, second: bool,
                    bias: Operand | None, bias_add: bool) -> NodeCost | None:
    """x @ W (second=True) or W @ x with W stored: a linear layer over W's non-zeros."""
    rows = _as_rows(weight, used_as_second=second)
    stats = weight_stats(rows, ctx)
    outputs = out_elements(facts)
    if outputs % stats.channels:
        return None  # the weight's layout is not what the product reads: never guess
    positions = outputs // stats.channels
    mults = stats.nonzero * positions
    adds = (stats.nonzero - stats.nonzero_channels) * positions + (outputs if bias_add else 0)
    kept = (Stored(weight.key, weight.identity, ctx.stats(rows), ctx.bits.weight or 32, True),
            *bias_values(facts, ctx, bias))
    return NodeCost(Ops.at(mults, ctx.bits.mult, adds, ctx.accumulator_bits), kept)


def _info_of(facts: NodeFacts, node: object) -> TensorInfo | None:
    """Shape and dtype of the activation input `node` of the call."""
    for input_node, info in zip(facts.input_nodes, facts.inputs, strict=True):
        if input_node is node:
            return info
    return None


def _scales(facts: NodeFacts, *names: str) -> int:
    """One multiplication per output for each of `alpha`/`beta` that is not 1 (or 0)."""
    return sum(facts.args.get(name, 1) not in (0, 1) for name in names) * out_elements(facts)


def matmul(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """A dot product of length n per output: n mults and n - 1 adds. When one side is a stored
    2-D matrix (a weight written by hand: `x @ self.w`), its zeros are skipped as a linear
    layer's, and it is stored with a mask if that is cheaper."""
    first, second = (facts.args.get(name) for name in _operand_names(facts))
    by_node = {id(facts.args[name]): op for name, op in facts.operands.items()
               if name in facts.args}
    for operand_node, is_second in ((second, True), (first, False)):
        weight = by_node.get(id(operand_node))
        if weight is not None and weight.tensor.dim() == 2 and len(facts.inputs) == 2:
            return _stored_product(facts, ctx, weight, is_second, None, False)
    length = facts.inputs[0].shape[-1]
    outputs = out_elements(facts)
    return NodeCost(
        Ops.at(outputs * length, ctx.bits.mult, outputs * (length - 1), ctx.accumulator_bits)
    )


def _operand_names(facts: NodeFacts) -> tuple[str, str]:
    if "mat2" in facts.args:
        return "self", "mat2"
    if "other" in facts.args:
        return ("self" if "self" in facts.args else "input"), "other"
    names = [n for n in facts.args if isinstance(facts.args[n], torch.fx.Node)]
    padded = [*names, "", ""]
    return padded[0], padded[1]


def addmm(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """beta * input + alpha * (mat1 @ mat2). With mat2 stored it is a linear layer (GPT-2's
    Conv1D, core-ATen's decomposed nn.Linear): mat1's rows times mat2's non-zeros, and one add
    per output for `input` (a bias, stored dense). A scale other than 1 costs one product per
    output."""
    weight = facts.operands.get("mat2")
    bias = facts.operands.get("self")
    bias_add = facts.args.get("beta", 1) != 0
    if weight is not None and weight.tensor.dim() == 2:
        product = _stored_product(facts, ctx, weight, True, bias if bias_add else None, bias_add)
        if product is None:
            return None
        cost = product
    else:
        mat1 = _info_of(facts, facts.args.get("mat1"))
        if mat1 is None:
            return None
        length = mat1.shape[-1]
        outputs = out_elements(facts)
        adds = outputs * (length - 1) + (outputs if bias_add else 0)
        kept = bias_values(facts, ctx, bias) if bias_add and bias is not None else ()
        cost = NodeCost(Ops.at(outputs * length, ctx.bits.mult, adds, ctx.accumulator_bits),
                        kept)
    extra = _scales(facts, "alpha", "beta")
    return NodeCost(cost.ops + Ops.at(extra, ctx.bits.act, 0, 0), cost.stored)


def baddbmm(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """beta * input + alpha * (batch1 @ batch2): per output a length-n dot product (n mults,
    n - 1 adds), one add for `input` unless beta is 0, and one product per scale that is not 1.
    Dense: both batches are activations in the models that use it (attention scores)."""
    length = facts.inputs[-2].shape[-1]  # batch1: inputs are (input, batch1, batch2)
    outputs = out_elements(facts)
    adds = outputs * (length - 1) + (outputs if facts.args.get("beta", 1) != 0 else 0)
    mults = outputs * length
    return NodeCost(Ops.at(mults, ctx.bits.mult, adds, ctx.accumulator_bits)
                    + Ops.at(_scales(facts, "alpha", "beta"), ctx.bits.act, 0, 0))


# The IMT Atlantique course's 2022 profiler, as a variant: dense, base precision scaled mults,
# and its own arithmetic for grouped convs.


def imt_2022_dot_product(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Per output: n mults at the layer's width and (n_full - 1) / groups unscaled adds, where
    n_full = kernel x all input channels (the course divides the whole sum by the groups);
    a conv bias adds 1, a linear bias nothing. Zero weights still cost."""
    stats, kept = weights(facts, ctx)
    per_filter = stats.numel // stats.channels
    groups = int(str(facts.attributes.get("groups", 1))) if facts.kind == K.CONV else 1
    outputs = out_elements(facts)
    mults = outputs * per_filter
    adds = outputs * (per_filter * groups - 1) / groups
    bias = bias_values(facts, ctx)
    if bias and facts.kind == K.CONV:
        adds += outputs
    return NodeCost(Ops.at(mults, ctx.bits.mult, adds, ctx.accumulator_bits), (*kept, *bias))


def multiply_accumulates(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Dense multiply-accumulates only, at the wider of weight and activation width; only the
    weights are stored (the 2024 course formula: zeros enter as whole-model factors)."""
    stats, kept = weights(facts, ctx)
    macs = out_elements(facts) * (stats.numel // stats.channels)
    return NodeCost(Ops.at(macs, ctx.bits.mult, 0, 0), kept)
