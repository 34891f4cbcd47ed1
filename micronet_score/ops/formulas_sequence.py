"""Formulas of recurrent layers and attention (the specs are in `table_sequence`; einsum in
`formulas_einsum`).

Conventions shared by every formula here (a product is one multiplication, a sum of n values
n - 1 additions; the rule set's `activations` table prices sigmoid, tanh, relu and softmax):
- a projection by a stored weight is a dot product per output row over its non-zero weights,
  with one add per row for a bias (as a linear layer); its products count at the wider of the
  weight and activation widths, its accumulations and bias adds at the accumulator width;
- products between activations count at the activation width; dot-product accumulations at the
  accumulator width; every other addition at `ctx.add_bits` of the activation width;
- attention scales the queries (one product per query element, none for a scale of exactly 1),
  as an explicit `q * scale` does; a boolean or causal mask selects (free), an additive mask is
  one add per score;
- every stored tensor the node reads is charged once, at its declared or own width.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from micronet_score.bits import dtype_bits, width
from micronet_score.facts import NodeFacts, Operand
from micronet_score.graph import TensorInfo
from micronet_score.ops.cost import FormulaContext, NodeCost, Ops, Stored
from micronet_score.sparsity import dense_stats


def _scaled(ops: Ops, times: int) -> Ops:
    return Ops(ops.mults * times, ops.adds * times, ops.mult_bit_ops * times,
               ops.add_bit_ops * times)


def _stored_bits(operand: Operand, ctx: FormulaContext) -> int:
    """A float value at its declared (or own) width; integer data (an index) at its dtype's."""
    natural = width(operand.tensor.dtype, operand.bits, ctx.rules.default_bits)
    return ctx.bits.stored(natural) if natural is not None else dtype_bits(operand.tensor.dtype)


def _charged(facts: NodeFacts, ctx: FormulaContext) -> tuple[Stored, ...]:
    """Every stored operand, once. Weight matrices keep their zero structure (they may be
    stored sparse); biases, scales, tables and indices are stored dense, as the official
    counter stores everything but conv and linear weights."""
    return tuple(
        Stored(operand.key, operand.identity, ctx.stats(operand) if _is_matrix(name, operand)
               else dense_stats(tuple(operand.tensor.shape) or (1,)), _stored_bits(operand, ctx))
        for name, operand in facts.operands.items()
    )


def _is_matrix(name: str, operand: Operand) -> bool:
    """A weight matrix: a module's `*weight*` parameter, an op's `w_ih` / `w_hh` argument or a
    matrix of its `params` list."""
    named = "weight" in name or name.startswith(("w_", "params."))
    return named and operand.tensor.dim() >= 2


def _mult_bits(facts: NodeFacts, ctx: FormulaContext) -> int:
    """Width of a product by a stored weight: the wider of the weight and the activation."""
    widths = [_stored_bits(o, ctx) for o in facts.operands.values()
              if o.tensor.dtype.is_floating_point]
    return max([ctx.bits.mult, *widths])


def _projection(weight: Operand, bias: bool, positions: int, ctx: FormulaContext,
                mult_bits: int) -> Ops:
    """`weight` (rows x inputs) applied at `positions` inputs: per row and position, one product
    per non-zero weight, their sum, and a bias add."""
    stats = ctx.stats(weight)
    if not ctx.rules.sparsity.skip_zero_weights:
        stats = dense_stats(tuple(weight.tensor.shape), known=stats.known)
    adds = (stats.nonzero - stats.nonzero_channels + (stats.channels if bias else 0)) * positions
    return Ops.at(stats.nonzero * positions, mult_bits, adds, ctx.accumulator_bits)


def _dense_projection(rows: int, inputs: int, bias: bool, positions: int,
                      ctx: FormulaContext) -> Ops:
    """A projection by a weight computed in the forward pass (no zeros known): dense."""
    adds = rows * (inputs - 1 + (1 if bias else 0)) * positions
    return Ops.at(rows * inputs * positions, ctx.bits.mult, adds, ctx.accumulator_bits)


def _infos(facts: NodeFacts) -> dict[torch.fx.Node, TensorInfo]:
    return dict(zip(facts.input_nodes, facts.inputs, strict=True))


def _info(facts: NodeFacts, value: object) -> TensorInfo | None:
    return _infos(facts).get(value) if isinstance(value, torch.fx.Node) else None


# --- recurrent layers ---------------------------------------------------------------------

# Per time step and hidden unit, after the two projections are summed gate by gate:
# (sigmoids, tanhs, other activations, products, adds).
_CELL = {
    # i, f, o = sigmoid; g = tanh; c' = f*c + i*g; h' = o * tanh(c')
    "lstm": (3, 2, 0, 3, 1),
    # r, z = sigmoid; n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); h' = (1-z)*n + z*h,
    # computed as n + z*(h - n)
    "gru": (2, 1, 0, 2, 2),
    # h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu
    "rnn": (0, 0, 1, 0, 0),
}
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_ROLES = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


def _groups(facts: NodeFacts, has_biases: bool) -> list[dict[str, Operand]] | None:
    """The weights of each layer and direction, as (w_ih, w_hh, b_ih, b_hh, w_hr) roles, from
    a module's parameter names, a cell op's argument names, or an op's `params` list."""
    found = facts.operands
    if "weight_ih" in found or "w_ih" in found:  # a cell: module parameters or op arguments
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if "weight_ih" in found else (
            "w_ih", "w_hh", "b_ih", "b_hh")
        return [{role: found[name] for role, name in zip(_ROLES, names, strict=False)
                 if name in found}]
    suffixes = [name.removeprefix("weight_ih") for name in found if name.startswith("weight_ih")]
    if suffixes:  # a module: weight_ih_l0, weight_hh_l0_reverse, ...
        return [{role: found[name + suffix] for role, name in zip(
            _ROLES, ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"), strict=True)
            if name + suffix in found} for suffix in suffixes]
    params = facts.args.get("params")
    if not isinstance(params, list | tuple) or not params:
        return None
    listed = [found.get(f"params.{i}") for i in range(len(params))]
    if any(operand is None for operand in listed):
        return None  # a weight computed in the forward pass: not supported here
    layers = int(str(facts.args.get("num_layers", 1)))
    directions = 2 if facts.args.get("bidirectional") else 1
    size = len(listed) // (layers * directions)
    roles = ("w_ih", "w_hh", *(("b_ih", "b_hh") if has_biases else ()), "w_hr")[:size]
    return [dict(zip(roles, listed[i:i + size], strict=True))  # type: ignore[arg-type]
            for i in range(0, len(listed), size)]


def recurrent(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """nn.LSTM / nn.GRU / nn.RNN (any layers, directions, bias, batch_first) and their cells.

    Per time step, sequence in the batch, layer and direction, with G gates of H units:
    the input and hidden projections (G*H rows, one product per non-zero weight, the sum, one
    add per row for each bias), then G*H adds summing them gate by gate, then per unit
    LSTM: 3 sigmoids, 2 tanh, 3 products and 1 add (c' = f*c + i*g, h' = o*tanh(c'));
    GRU: 2 sigmoids, 1 tanh, 2 products and 2 adds (r*(W_hn h + b_hn); h' = n + z*(h - n));
    RNN: one tanh or relu. A projected LSTM (proj_size) adds the W_hr projection.
    Steps are the sequence length (1 for a cell). Returns None for weights computed in the
    forward pass.
    """
    kind = facts.kind.removesuffix("_cell") if facts.kind else ""
    has_biases = bool(facts.attributes.get("bias", facts.args.get("has_biases", True)))
    groups = _groups(facts, has_biases)
    if not groups or not facts.inputs:
        return None
    shape = facts.inputs[0].shape
    cell = facts.kind is not None and facts.kind.endswith("_cell")
    batch_first = bool(facts.attributes.get("batch_first", facts.args.get("batch_first")))
    if cell:
        steps, batch = 1, shape[0] if len(shape) == 2 else 1
    elif len(shape) == 3:
        steps, batch = (shape[1], shape[0]) if batch_first else (shape[0], shape[1])
    else:
        steps, batch = shape[0], 1
    nonlinearity = str(facts.attributes.get(
        "nonlinearity", "relu" if "relu" in facts.target else "tanh"))
    sigmoids, tanhs, others, products, adds = _CELL[kind]
    costs = ctx.rules.activations
    other = costs["relu" if nonlinearity == "relu" else "tanh"]
    act, mult_bits = ctx.bits.act, _mult_bits(facts, ctx)
    ops = Ops()
    for group in groups:
        hidden = group["w_ih"].tensor.shape[0] // _GATES[kind]
        step = _projection(group["w_ih"], "b_ih" in group, 1, ctx, mult_bits)
        step += _projection(group["w_hh"], "b_hh" in group, 1, ctx, mult_bits)
        if "w_hr" in group:
            step += _projection(group["w_hr"], False, 1, ctx, mult_bits)
        step += Ops.at(0, 0, _GATES[kind] * hidden, ctx.accumulator_bits)
        unit_mults = (sigmoids * costs["sigmoid"].mults + tanhs * costs["tanh"].mults
                      + others * other.mults + products)
        unit_adds = (sigmoids * costs["sigmoid"].adds + tanhs * costs["tanh"].adds
                     + others * other.adds + adds)
        step += Ops.at(unit_mults * hidden, act, unit_adds * hidden, ctx.add_bits(act))
        ops += _scaled(step, steps * batch)
    return NodeCost(ops, _charged(facts, ctx))


# --- attention ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attention:
    """softmax(scale * q kᵀ + mask) v for `heads` independent (batch, head) pairs."""

    heads: int
    queries: int
    keys: int
    depth: int
    value_depth: int
    scaled: bool = True
    mask_adds: bool = False


def _attention_ops(a: _Attention, ctx: FormulaContext) -> Ops:
    """Scale: heads*queries*depth products (none if unscaled). Scores: heads*queries*keys dot
    products of length depth. Mask: one add per score if additive. Softmax: the rule set's cost
    per score. Output: heads*queries*value_depth dot products of length keys."""
    scores = a.heads * a.queries * a.keys
    outputs = a.heads * a.queries * a.value_depth
    softmax = ctx.rules.activations["softmax"]
    act = ctx.bits.act
    scale = a.heads * a.queries * a.depth if a.scaled else 0
    mults = scale + scores * a.depth + softmax.mults * scores + outputs * a.keys
    elementwise = softmax.adds * scores + (scores if a.mask_adds else 0)
    accumulate = scores * (a.depth - 1) + outputs * (a.keys - 1)
    return (Ops.at(mults, act, elementwise, ctx.add_bits(act))
            + Ops.at(0, 0, accumulate, ctx.accumulator_bits))


def attention(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """F.scaled_dot_product_attention and its aten spellings: see `_attention_ops`. The scale
    (default 1/sqrt(E)) is one product per query element; `is_causal` and a boolean mask only
    select; a float `attn_mask` / `attn_bias` is one add per score; dropout is off (eval)."""
    args = facts.args
    query, key, value = (_info(facts, args.get(name)) for name in ("query", "key", "value"))
    if query is None or key is None or value is None:
        return None
    mask = args.get("attn_mask", args.get("attn_bias"))
    mask_info = _info(facts, mask)
    shape = _Attention(
        heads=math.prod(query.shape[:-2]), queries=query.shape[-2], keys=key.shape[-2],
        depth=query.shape[-1], value_depth=value.shape[-1], scaled=args.get("scale") != 1.0,
        mask_adds=mask_info is not None and mask_info.dtype != torch.bool,
    )
    return NodeCost(_attention_ops(shape, ctx), _charged(facts, ctx))


def _slice(operand: Operand, part: int, rows: int) -> Operand:
    return Operand(f"{operand.key}[{'qkv'[part]}]", hash((operand.identity, part)),
                   operand.tensor[part * rows:(part + 1) * rows])


def multihead_attention(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """nn.MultiheadAttention, as torch computes it in eval mode: the q, k, v projections (with
    `in_proj_bias`), `_attention_ops` over num_heads heads (keys + 1 with `bias_k`, + 1 with
    `add_zero_attn`; one add per score when any mask is given, as torch turns boolean masks
    into additive ones, and one more per score to merge two masks), the output projection,
    and with need_weights (the default) and average_attn_weights the mean of the attention
    weights over the heads (heads - 1 adds and 1 division per weight)."""
    signature = inspect.signature(nn.MultiheadAttention.forward)
    call = signature.bind(None, *facts.node.args, **facts.node.kwargs)
    call.apply_defaults()
    bound: Mapping[str, object] = call.arguments
    query, key = _info(facts, bound["query"]), _info(facts, bound["key"])
    if query is None or key is None:
        return None
    ops_of = facts.operands
    embed = query.shape[-1]
    batch_first = bool(facts.attributes.get("batch_first"))
    batch = (query.shape[0] if batch_first else query.shape[1]) if len(query.shape) == 3 else 1
    queries, keys = query.numel // embed // batch, key.numel // key.shape[-1] // batch
    mult_bits = _mult_bits(facts, ctx)
    bias = "in_proj_bias" in ops_of
    if "in_proj_weight" in ops_of:
        weights = [_slice(ops_of["in_proj_weight"], part, embed) for part in range(3)]
    else:
        weights = [ops_of[f"{part}_proj_weight"] for part in "qkv"]
    ops = Ops()
    for weight, positions in zip(weights, (queries, keys, keys), strict=True):
        ops += _projection(weight, bias, positions * batch, ctx, mult_bits)
    keys += ("bias_k" in ops_of) + bool(facts.attributes.get("add_zero_attn"))
    heads = int(str(facts.attributes["num_heads"]))
    masks = sum(_info(facts, bound[name]) is not None for name in ("attn_mask", "key_padding_mask"))
    core = _Attention(batch * heads, queries, keys, embed // heads, embed // heads,
                      mask_adds=masks > 0)
    ops += _attention_ops(core, ctx)
    weights_out = batch * queries * keys
    act = ctx.bits.act
    if masks == 2:
        ops += Ops.at(0, 0, batch * heads * queries * keys, ctx.add_bits(act))
    if bound["need_weights"] and bound["average_attn_weights"]:
        ops += Ops.at(weights_out, act, weights_out * (heads - 1), ctx.add_bits(act))
    ops += _projection(ops_of["out_proj.weight"], "out_proj.bias" in ops_of, queries * batch,
                       ctx, mult_bits)
    return NodeCost(ops, _charged(facts, ctx))


# --- einsum -------------------------------------------------------------------------------


def _weight_ops(facts: NodeFacts, name: str, bias: str, positions: int,
                ctx: FormulaContext) -> Ops | None:
    stored = facts.operands.get(name)
    if stored is not None:
        return _projection(stored, bias in facts.operands or facts.args.get(bias) is not None,
                           positions, ctx, _mult_bits(facts, ctx))
    info = _info(facts, facts.args.get(name))
    if info is None or len(info.shape) != 2:
        return None
    return _dense_projection(*info.shape, facts.args.get(bias) is not None, positions, ctx)


def shifted_window_attention(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """torchvision's `shifted_window_attention` (Swin v1 and v2), on an input N x H x W x C
    padded to whole windows of T = wh*ww tokens (W windows in all, h heads of depth d = C/h):
    the qkv projection and the output projection at W*T positions (as linear layers); v1 scales
    q (W*T*C products); v2 normalizes q and k instead (per vector of d values: d squares, d - 1
    adds, a square root, a clamp and d divisions: 2d + 2 products), clamps and exponentiates
    `logit_scale` (2 products per value) and multiplies each score by it; per window and head,
    T x T scores of depth d, the relative position bias add, the softmax and the product with v.
    A shifted window also builds its mask (per window: T*T subtractions and 2 comparisons,
    counted as products) and adds it to the scores. Padding, rolls and window partitions are
    free. The stored weights, biases and logit_scale are charged once."""
    args = facts.args
    x = _info(facts, args.get("input"))
    if x is None or len(x.shape) != 4:
        return None
    window = [int(v) for v in args["window_size"]]  # type: ignore[attr-defined]
    shift = [int(v) for v in args["shift_size"]]  # type: ignore[attr-defined]
    heads = int(str(args["num_heads"]))
    batch, height, width_, channels = x.shape
    padded = (-(-height // window[0]) * window[0], -(-width_ // window[1]) * window[1])
    shifted = any(s > 0 and w < p for s, w, p in zip(shift, window, padded, strict=True))
    per_image = (padded[0] // window[0]) * (padded[1] // window[1])
    tokens, depth = window[0] * window[1], channels // heads
    positions = batch * per_image * tokens
    qkv = _weight_ops(facts, "qkv_weight", "qkv_bias", positions, ctx)
    proj = _weight_ops(facts, "proj_weight", "proj_bias", positions, ctx)
    if qkv is None or proj is None:
        return None
    windows = batch * per_image
    scores = windows * heads * tokens * tokens
    act = ctx.bits.act
    core = _Attention(windows * heads, tokens, tokens, depth, depth, scaled=False,
                      mask_adds=shifted)
    extra = Ops.at(0, 0, scores, ctx.add_bits(act))  # the relative position bias
    logit_scale = args.get("logit_scale")
    if logit_scale is not None:
        scale = facts.operands.get("logit_scale")
        info = _info(facts, logit_scale)
        values = scale.tensor.numel() if scale is not None else info.numel if info else heads
        vectors = 2 * windows * heads * tokens
        extra += Ops.at(vectors * (2 * depth + 2) + 2 * values + scores, act,
                        vectors * (depth - 1), ctx.add_bits(act))
    else:
        extra += Ops.at(positions * channels, act, 0, 0)
    if shifted:  # the mask: a difference and two comparisons per entry
        extra += Ops.at(2 * per_image * tokens * tokens, act, per_image * tokens * tokens,
                        ctx.add_bits(act))
    ops = qkv + _attention_ops(core, ctx) + extra + proj
    return NodeCost(ops, _charged(facts, ctx))


def gather(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """A lookup in a stored table (torchvision's relative position bias): no arithmetic; the
    table and the index it reads are charged."""
    return NodeCost(Ops(), _charged(facts, ctx))


def no_arithmetic(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Data movement or bookkeeping: nothing to count."""
    return NodeCost(Ops())


def masked_add(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """timm's `maybe_add_mask(scores, attn_mask)`: the scores unchanged without a mask (free),
    else one add per score."""
    if _info(facts, facts.args.get("attn_mask")) is None or facts.output is None:
        return NodeCost(Ops(), _charged(facts, ctx))
    adds = facts.output.numel
    return NodeCost(Ops.at(0, 0, adds, ctx.add_bits(ctx.bits.act)), _charged(facts, ctx))
