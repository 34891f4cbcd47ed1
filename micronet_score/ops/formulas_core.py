"""Formulas of the core op kinds: pure functions from a node's facts to its cost.

The op table (`table_core.py`) names which formula serves which kind and rule variant. A formula
returns raw counts together with the bit width each count is done at; the freebie and the
conversion to 32-bit equivalents happen later, once the whole model is known.
"""

from __future__ import annotations

import math

from micronet_score.bits import QUANTIZED, dtype_bits
from micronet_score.facts import QPARAM_ROLES, NodeFacts
from micronet_score.opkinds import OpKind
from micronet_score.ops.cost import FormulaContext, NodeCost, Ops, Stored
from micronet_score.ops.formulas_dot import out_elements as _out
from micronet_score.ops.formulas_dot import stored
from micronet_score.sparsity import dense_stats

K = OpKind


_ZERO_POINT_ROLES = ("zero_point", "zero_points", "weight_zero_point")


def batch_norm(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Folded: free here (the layer it folds into carries its bias). Otherwise a per-channel
    scale and shift, whose running statistics fold into those two values."""
    if ctx.folded_into is not None:
        return NodeCost(Ops(), (), f"folded into {ctx.folded_into}")
    from micronet_score.ops.formulas_norm import batch_statistics, computes_statistics

    if computes_statistics(facts):  # training=True, or core-ATen's instance norm
        return batch_statistics(facts, ctx)
    policy = ctx.rules.batch_norm
    elements = _out(facts)
    channels = facts.inputs[0].shape[1]
    owner = facts.weight or facts.operands.get("running_var")
    kept: tuple[Stored, ...] = ()
    if owner is not None:
        values = dense_stats((policy.params_per_channel * channels,))
        kept = (Stored(f"{facts.module or facts.node.name}.scale_shift", owner.identity,
                         values, ctx.bits.weight or 32),)
    width = ctx.bits.mult
    ops = Ops.at(policy.mults_per_element * elements, width,
                 policy.adds_per_element * elements, ctx.add_bits(width))
    return NodeCost(ops, kept)


def normalization(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Per element: sum for the mean, centre, square, sum for the variance, scale by 1/std
    (2 mults, 3 adds). Per normalized group: divide for the mean and the variance, add eps,
    reciprocal square root (3 mults, 1 add). An affine adds 1 mult and 1 add per element."""
    elements = _out(facts)
    if facts.kind == K.LAYER_NORM:
        group_size = math.prod(_ints(facts.attributes["normalized_shape"]))
        groups = elements // group_size
    else:
        assert facts.output is not None
        # `num_groups` for the module and F.group_norm, `group` for aten::native_group_norm
        number = facts.attributes.get("num_groups", facts.attributes.get("group"))
        groups = facts.output.shape[0] * int(str(number))
    affine = facts.weight is not None
    mults = 2 * elements + 3 * groups + (elements if affine else 0)
    adds = 3 * elements + groups + (elements if facts.bias is not None else 0)
    width = ctx.bits.mult
    kept = tuple(
        stored(operand, dense_stats(tuple(operand.tensor.shape)), ctx.bits.weight or 32)
        for operand in (facts.weight, facts.bias)
        if operand is not None
    )
    return NodeCost(Ops.at(mults, width, adds, ctx.add_bits(width)), kept)


def embedding(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """A table lookup does no arithmetic; the table is stored."""
    weight = facts.weight
    assert weight is not None
    return NodeCost(Ops(), (stored(weight, ctx.stats(weight), ctx.bits.weight or 32, True),))


def pool(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Per output: window - 1 adds (or comparisons) and, for an average, one division."""
    outputs = _out(facts)
    assert facts.output is not None
    window = math.prod(_kernel(facts))
    mults = outputs if facts.kind == K.AVG_POOL else 0
    width = ctx.bits.act
    return NodeCost(Ops.at(mults, width, outputs * (window - 1), ctx.add_bits(width)))


def adaptive_pool(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Adaptive windows differ in size; their exact sizes are summed, dimension by dimension."""
    assert facts.output is not None
    in_shape, out_shape = facts.inputs[0].shape, facts.output.shape
    spatial = len(out_shape) - 2
    planes = math.prod(out_shape[:-spatial])
    covered = planes * math.prod(
        _window_total(size_in, size_out)
        for size_in, size_out in zip(in_shape[-spatial:], out_shape[-spatial:], strict=True)
    )
    outputs = _out(facts)
    mults = outputs if facts.kind == K.ADAPTIVE_AVG_POOL else 0
    width = ctx.bits.act
    return NodeCost(Ops.at(mults, width, covered - outputs, ctx.add_bits(width)))


def _window_total(size_in: int, size_out: int) -> int:
    """Sum of the adaptive window lengths along one dimension (PyTorch's floor/ceil bounds)."""
    return sum(
        -(-(j + 1) * size_in // size_out) - (j * size_in // size_out) for j in range(size_out)
    )


def reduction(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Summing n values takes n - 1 adds per output; a mean adds one division per output."""
    outputs = _out(facts)
    inputs = facts.inputs[0].numel
    mults = outputs if facts.kind == K.MEAN else 0
    width = ctx.bits.act
    return NodeCost(Ops.at(mults, width, inputs - outputs, ctx.add_bits(width)))


def elementwise_add(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    return NodeCost(Ops.at(0, 0, _out(facts), ctx.add_bits(ctx.bits.act)))


def elementwise_mul(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """One product per output element; none for a product or quotient by the number 1, or a
    product by 0 (core-ATen writes such steps inside softplus and addcdiv)."""
    other = facts.args.get("other")
    if isinstance(other, int | float) and not isinstance(other, bool) and (
        other == 1 or (other == 0 and facts.kind == "mul")
    ):
        return NodeCost(Ops())
    return NodeCost(Ops.at(_out(facts), ctx.bits.act, 0, 0))


def activation(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Per-element costs come from the rule set's activation table."""
    assert facts.kind is not None
    cost = ctx.rules.activations[facts.kind]
    elements = _out(facts)
    width = ctx.bits.act
    # aten::elu also spells selu: its output and input scales other than 1 are products
    scales = sum(facts.args.get(name, 1) != 1 for name in ("scale", "input_scale"))
    return NodeCost(
        Ops.at((cost.mults + scales) * elements, width, cost.adds * elements,
               ctx.add_bits(width))
    )


def free(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    return NodeCost(Ops())


def quantize(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """No arithmetic is counted; its scale and zero point are charged by `with_qparams`."""
    return NodeCost(Ops())


def with_qparams(cost: NodeCost, facts: NodeFacts) -> NodeCost:
    """Quantization parameters a node reads (a quantize op's, a quantized layer's output scale
    and zero point) are stored values: scales at 32 bits, zero points at the quantized width."""
    stored_ids = {s.identity for s in cost.stored}
    zero_point_bits = facts.quant_bits or (
        dtype_bits(facts.output.dtype) if facts.output and facts.output.dtype in QUANTIZED else 8
    )
    extra = tuple(
        stored(operand, dense_stats(tuple(operand.tensor.shape) or (1,)),
                operand.bits or zero_point_bits if role in _ZERO_POINT_ROLES else 32)
        for role, operand in facts.operands.items()
        if role in QPARAM_ROLES and operand.identity not in stored_ids
        and (role not in _ZERO_POINT_ROLES or operand.tensor.any())  # all-zero: implied
    )
    return NodeCost(cost.ops, cost.stored + extra, cost.note) if extra else cost


def with_fused_activation(cost: NodeCost, facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """A fused layer (ConvReLU2d, quantized add_relu) also pays for its activation."""
    assert facts.fused is not None
    activation_cost = ctx.rules.activations[facts.fused]
    elements = _out(facts)
    width = ctx.bits.act
    extra = Ops.at(activation_cost.mults * elements, width,
                   activation_cost.adds * elements, ctx.add_bits(width))
    return NodeCost(cost.ops + extra, cost.stored, cost.note)


def _kernel(facts: NodeFacts) -> tuple[int, ...]:
    """A pooling window as one size per spatial dimension."""
    assert facts.output is not None
    kernel = facts.attributes["kernel_size"]
    spatial = len(facts.output.shape) - 2
    return (kernel,) * spatial if isinstance(kernel, int) else _ints(kernel)


def _ints(value: object) -> tuple[int, ...]:
    assert isinstance(value, list | tuple), f"expected a sequence of ints, got {value!r}"
    return tuple(int(v) for v in value)


# The IMT Atlantique course's 2022 profiler: its own arithmetic for average pools.


def imt_2022_avg_pool(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """The course charges an average pool of kernel k (an integer) k ops per output."""
    kernel = facts.attributes["kernel_size"]
    per_output = kernel if isinstance(kernel, int) else math.prod(_kernel(facts))
    return NodeCost(Ops.at(0, 0, _out(facts) * per_output, ctx.add_bits(ctx.bits.act)))
