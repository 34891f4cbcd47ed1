"""Formulas of the core op kinds: pure functions from a node's facts to its cost.

The op table (`table_core.py`) names which formula serves which kind and rule variant. A formula
returns raw counts together with the bit width each count is done at; the freebie and the
conversion to 32-bit equivalents happen later, once the whole model is known.
"""

from __future__ import annotations

import math

from micronet_score.bits import QUANTIZED, dtype_bits
from micronet_score.facts import QPARAM_ROLES, NodeFacts, Operand
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
        groups = facts.output.shape[0] * int(str(facts.attributes["num_groups"]))
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


def attention(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """softmax(q·kᵀ · scale) · v: two batched matmuls, one scaling per score and a softmax."""
    query, key, value = facts.inputs[:3]
    batch = math.prod(query.shape[:-2])
    queries, depth = query.shape[-2:]
    return NodeCost(_attention_core(batch, queries, key.shape[-2], depth, value.shape[-1], ctx))


def _slice(operand: Operand, rows: slice, part: str) -> Operand:
    return Operand(f"{operand.key}[{part}]", hash((operand.identity, part)),
                   operand.tensor[rows])


def _projection(weight: Operand, bias: Operand | None, positions: int,
                ctx: FormulaContext) -> Ops:
    """A linear map applied at `positions` inputs: one dot product per output row."""
    stats = ctx.stats(weight)
    if not ctx.rules.sparsity.skip_zero_weights:
        stats = dense_stats(tuple(weight.tensor.shape), known=stats.known)
    adds = (stats.nonzero - stats.nonzero_channels) * positions
    if bias is not None:
        adds += stats.channels * positions
    return Ops.at(stats.nonzero * positions, ctx.bits.mult, adds, ctx.accumulator_bits)


def _attention_core(batch_heads: int, queries: int, keys: int, depth: int, value_depth: int,
                    ctx: FormulaContext) -> Ops:
    """softmax(q kᵀ · scale) v for `batch_heads` independent heads."""
    scores = batch_heads * queries * keys
    softmax = ctx.rules.activations[K.SOFTMAX]
    act = ctx.bits.act
    weighted_values = batch_heads * queries * value_depth * keys
    mults = scores * depth + scores + softmax.mults * scores + weighted_values
    accumulate = scores * (depth - 1) + batch_heads * queries * value_depth * (keys - 1)
    return Ops.at(mults, act, softmax.adds * scores, ctx.add_bits(act)) + Ops.at(
        0, 0, accumulate, ctx.accumulator_bits
    )


def _all_stored(facts: NodeFacts, ctx: FormulaContext) -> tuple[Stored, ...]:
    bits = ctx.bits.weight or 32
    return tuple(
        stored(op, ctx.stats(op), bits, True) if op.tensor.dim() >= 2
        else stored(op, dense_stats(tuple(op.tensor.shape) or (1,)), bits)
        for op in facts.operands.values()
    )


def multihead_attention(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """nn.MultiheadAttention: the q, k and v projections, the attention itself, and the output
    projection. Batch size 1, so a sequence of L tokens gives L positions."""
    query, key = facts.inputs[:2]
    ops_of = facts.operands
    embed = query.shape[-1]
    queries, keys = query.numel // embed, key.numel // key.shape[-1]
    if "in_proj_weight" in ops_of:
        packed = ops_of["in_proj_weight"]
        weights = [_slice(packed, slice(i * embed, (i + 1) * embed), part)
                   for i, part in enumerate("qkv")]
    else:
        weights = [ops_of[f"{part}_proj_weight"] for part in "qkv"]
    bias = ops_of.get("in_proj_bias")
    ops = Ops()
    for weight, positions in zip(weights, (queries, keys, keys), strict=True):
        ops = ops + _projection(weight, bias, positions, ctx)
    heads = int(str(facts.attributes["num_heads"]))
    ops = ops + _attention_core(heads, queries, keys, embed // heads, embed // heads, ctx)
    ops = ops + _projection(ops_of["out_proj.weight"], ops_of.get("out_proj.bias"), queries, ctx)
    return NodeCost(ops, _all_stored(facts, ctx))


def lstm(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Per time step, layer and direction: the 4 gate pre-activations are two dot products
    (input and hidden state) added together and to two biases; then 3 sigmoids, 2 tanh, the
    cell update c = f*c + i*g (2 mults, 1 add) and h = o*tanh(c) (1 mult)."""
    (sequence, *_) = facts.inputs
    batch_first = bool(facts.attributes.get("batch_first"))
    steps = sequence.shape[1] if batch_first and len(sequence.shape) == 3 else sequence.shape[0]
    hidden = int(str(facts.attributes["hidden_size"]))
    sigmoid, tanh = ctx.rules.activations[K.SIGMOID], ctx.rules.activations[K.TANH]
    act = ctx.bits.act
    gate_ops = Ops.at(3 * hidden * sigmoid.mults + 2 * hidden * tanh.mults + 3 * hidden, act,
                      3 * hidden * sigmoid.adds + 2 * hidden * tanh.adds + hidden,
                      ctx.add_bits(act))
    ops = Ops()
    for name, weight in facts.operands.items():
        if not name.startswith("weight_ih"):
            continue
        suffix = name.removeprefix("weight_ih")  # e.g. "_l0" or "_l1_reverse"
        step = _projection(weight, None, 1, ctx)
        step = step + _projection(facts.operands[f"weight_hh{suffix}"], None, 1, ctx)
        if f"weight_hr{suffix}" in facts.operands:  # projected LSTM (proj_size > 0)
            step = step + _projection(facts.operands[f"weight_hr{suffix}"], None, 1, ctx)
        with_bias = f"bias_ih{suffix}" in facts.operands
        combine = Ops.at(0, 0, 4 * hidden * (3 if with_bias else 1), ctx.accumulator_bits)
        ops = ops + _scaled(step + combine + gate_ops, steps)
    return NodeCost(ops, _all_stored(facts, ctx))


def _scaled(ops: Ops, times: int) -> Ops:
    return Ops(ops.mults * times, ops.adds * times, ops.mult_bit_ops * times,
               ops.add_bit_ops * times)


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
    return NodeCost(Ops.at(_out(facts), ctx.bits.act, 0, 0))


def activation(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Per-element costs come from the rule set's activation table."""
    assert facts.kind is not None
    cost = ctx.rules.activations[facts.kind]
    elements = _out(facts)
    width = ctx.bits.act
    return NodeCost(
        Ops.at(cost.mults * elements, width, cost.adds * elements, ctx.add_bits(width))
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
