"""Formulas of the extra normalizations (instance, RMS, local response) and activations with
parameters, with the conventions of `formulas_extra`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from micronet_score.ops.cost import FormulaContext, NodeCost, Ops, Stored
from micronet_score.sparsity import dense_stats

if TYPE_CHECKING:
    from micronet_score.facts import NodeFacts
from micronet_score.ops.formulas_extra import (
    _argument,
    _elementwise,
    _number,
    _out,
    _overload,
    _stored,
    pow_products,
)


def _normalized(elements: int, groups: int, affine_weight: bool, affine_bias: bool) -> tuple[
        int, int]:
    """Mean and variance per group, as the core layer_norm / group_norm count: per element
    2 products and 3 adds, per group 3 products and 1 add, and the affine transform."""
    mults = 2 * elements + 3 * groups + (elements if affine_weight else 0)
    adds = 3 * elements + groups + (elements if affine_bias else 0)
    return mults, adds


def _affine_normalized(facts: NodeFacts, ctx: FormulaContext, groups: int) -> NodeCost:
    mults, adds = _normalized(_out(facts), groups, facts.weight is not None,
                              facts.bias is not None)
    width = ctx.bits.mult
    stored = tuple(_stored(op, ctx) for op in (facts.weight, facts.bias) if op is not None)
    return NodeCost(Ops.at(mults, width, adds, ctx.add_bits(width)), stored)


def computes_statistics(facts: NodeFacts) -> bool:
    """Whether a batch-norm node normalizes with its input's own statistics (training=True, or
    the `no_stats` overload core-ATen writes for an instance norm) rather than running ones."""
    return _overload(facts) == "no_stats" or _argument(facts, ("training",), None) is True


def batch_statistics(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """A batch norm computing its statistics: mean and variance of each channel over the batch
    and spatial dimensions, `_normalized` with C groups (core-ATen's instance norm: a view to
    (1, N*C, ...) and this, so N*C groups)."""
    return _affine_normalized(facts, ctx, facts.inputs[0].shape[1])


def instance_norm(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Statistics of each channel of each sample (as group_norm with one channel per group):
    `_normalized` with N * C groups. In eval mode with running statistics it is a per-channel
    scale and shift, as an unfolded BatchNorm (the rule set's batch_norm costs)."""
    assert facts.output is not None
    elements = _out(facts)
    channels = facts.output.shape[1]
    own_stats = _argument(facts, ("use_input_stats",), 5)
    if own_stats is None:  # the module: batch statistics unless tracked and in eval mode
        own_stats = bool(facts.attributes.get("training")) or not facts.attributes.get(
            "track_running_stats")
    if own_stats:
        return _affine_normalized(facts, ctx, facts.output.shape[0] * channels)
    policy = ctx.rules.batch_norm
    owner = facts.weight or facts.operands.get("running_var")
    kept: tuple[Stored, ...] = ()
    if owner is not None:
        values = dense_stats((policy.params_per_channel * channels,))
        kept = (Stored(f"{facts.module or facts.node.name}.scale_shift", owner.identity, values,
                       ctx.bits.weight or 32),)
    width = ctx.bits.mult
    ops = Ops.at(policy.mults_per_element * elements, width,
                 policy.adds_per_element * elements, ctx.add_bits(width))
    return NodeCost(ops, kept)


def rms_norm(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """x / sqrt(mean(x**2) + eps) over groups of the normalized shape: per element one square
    and one scaling product, the sum (n - 1 adds per group); per group a division, the eps add
    and an rsqrt; a weight adds one product per element. 2E + 2G (+E) products, E adds."""
    elements = _out(facts)
    shape = _argument(facts, ("normalized_shape",), 1)
    dims = len(shape) if isinstance(shape, list | tuple) else 1  # its sizes may be graph nodes
    groups = elements // math.prod(facts.inputs[0].shape[-dims:])
    weight = facts.weight
    mults = 2 * elements + 2 * groups + (elements if weight is not None else 0)
    width = ctx.bits.mult
    stored = (_stored(weight, ctx),) if weight is not None else ()
    return NodeCost(Ops.at(mults, width, elements, ctx.add_bits(width)), stored)


def local_response_norm(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """x / (k + alpha * avg(x**2 over `size` channels)) ** beta, as F.local_response_norm
    computes it: per element a square, the window average (size - 1 adds, 1 division), the
    alpha product, the k add, the power (`pow_products` of beta) and the division."""
    elements = _out(facts)
    size = int(str(_argument(facts, ("size",), 1, 1)))
    beta = _number(_argument(facts, ("beta",), 3, 0.75))
    mults = (4 + pow_products(beta)) * elements
    return _elementwise(mults, size * elements, ctx)


# ---------------------------------------------------------------- activations


def _activation_cost(facts: NodeFacts, ctx: FormulaContext, kind: str) -> tuple[float, float]:
    cost = ctx.rules.activations[kind]
    elements = _out(facts)
    return cost.mults * elements, cost.adds * elements


def scaled_activation(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """The rule set's `activations` cost per element; softplus's beta and celu's alpha, when not
    1, scale the input and the output: 2 more products per element."""
    assert facts.kind is not None
    mults, adds = _activation_cost(facts, ctx, facts.kind)
    names = ("beta",) if facts.kind == "softplus" else ("alpha",)
    factor = _number(_argument(facts, names, 1, 1.0))
    if factor is not None and factor != 1.0:
        mults += 2 * _out(facts)
    return _elementwise(mults, adds, ctx)


def prelu(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """The rule set's `prelu` cost per element (a comparison and the slope's product); its
    slopes (one, or one per channel) are stored."""
    mults, adds = _activation_cost(facts, ctx, "prelu")
    width = ctx.bits.act
    stored = (_stored(facts.weight, ctx),) if facts.weight is not None else ()
    return NodeCost(Ops.at(mults, width, adds, ctx.add_bits(width)), stored)


def glu(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """a * sigmoid(b) on the two halves along `dim`: per output element the rule set's sigmoid
    cost and one product."""
    mults, adds = _activation_cost(facts, ctx, "sigmoid")
    return _elementwise(mults + _out(facts), adds, ctx)
