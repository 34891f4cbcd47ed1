"""Count a traced graph under a rule set, then summarize the counts into a scored report.

Counting is one pass over the nodes; storage shared by several nodes (a module called twice, tied
weights) is charged once, to its first user.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx

from micronet_score.bits import BitsDeclaration, NodeBits, dtype_bits, resolve, unmatched, width
from micronet_score.errors import UserError
from micronet_score.facts import LAYER_ROLES, NodeFacts, Operand, gather_facts
from micronet_score.folding import batch_norm_folds, folded_shift
from micronet_score.graph import TracedModel
from micronet_score.opkinds import OpKind
from micronet_score.ops.cost import FormulaContext, NodeCost, Ops, Stored
from micronet_score.ops.formulas_core import with_fused_activation, with_qparams
from micronet_score.ops.index import formula_of
from micronet_score.ops.spec import Trait
from micronet_score.results import Layer, Report, Uncounted, per_example
from micronet_score.rules import Baseline, RuleSet
from micronet_score.sparsity import WeightStats, cheapest_storage, tensor_stats

_NOT_LAYERS = (OpKind.QUANTIZE, OpKind.PARAMETER, OpKind.BUFFER)


@dataclass(frozen=True)
class CountedNode:
    facts: NodeFacts
    bits: NodeBits
    cost: NodeCost


@dataclass(frozen=True)
class Counts:
    nodes: tuple[CountedNode, ...]
    uncounted: tuple[Uncounted, ...]
    warnings: tuple[str, ...]
    input_shape: tuple[int, ...]
    trace_method: str


def count(
    traced: TracedModel,
    rules: RuleSet,
    declared: Sequence[BitsDeclaration] = (),
    accumulator_bits: int | None = None,
) -> Counts:
    all_facts = gather_facts(traced)
    folds = batch_norm_folds(all_facts) if rules.batch_norm.fold else {}
    folded_bias = {conv: folded_shift(bn, _label(conv)) for bn, conv in folds.items()}
    stats_cache: dict[int, WeightStats] = {}

    def stats(operand: Operand) -> WeightStats:
        if operand.identity not in stats_cache:
            stats_cache[operand.identity] = tensor_stats(operand.tensor)
        return stats_cache[operand.identity]

    value_bits = _value_bits(all_facts)
    counted: list[CountedNode] = []
    uncounted: list[Uncounted] = []
    charged: set[int] = set()
    for facts in all_facts:
        if not _visible(facts, rules):
            continue
        if facts.kind is None:
            uncounted.append(Uncounted(facts.node.name, facts.target, facts.module))
            counted.extend(_orphans(facts, traced, declared, charged, rules.default_bits))
            continue
        if facts.kind == OpKind.OBSERVER:
            raise UserError(
                f"the model is prepared for quantization but not converted: '{facts.module}' is "
                "an observer; call convert_fx (or convert_pt2e) first, or score the float model"
            )
        bits = _node_bits(facts, value_bits, declared, rules.default_bits)
        context = FormulaContext(
            rules=rules,
            bits=bits,
            accumulator_bits=accumulator_bits or rules.accumulator_bits,
            stats=stats,
            folded_bias=folded_bias.get(facts),
            folded_into=_label(folds[facts]) if facts in folds else None,
        )
        cost = formula_of(facts.kind, rules.formulas.get(facts.kind, "micronet"))(facts, context)
        if cost is None:  # the formula cannot count this instance exactly: say so, never guess
            uncounted.append(Uncounted(facts.node.name, facts.target, facts.module))
            continue
        assert isinstance(cost, NodeCost)
        if facts.fused is not None:
            cost = with_fused_activation(cost, facts, context)
        cost = with_qparams(cost, facts)
        counted.append(CountedNode(facts, bits, _charge_once(cost, charged)))
    counted.extend(_unclaimed_tensors(traced, all_facts, declared, charged, rules.default_bits))
    modules = {name for name, _ in traced.root.named_modules()}
    warnings = [f"--bits pattern '{p}' matches no module" for p in unmatched(declared, modules)]
    if any(not stats.known for stats in stats_cache.values()):
        warnings.append("weights are on the meta device: zeros unknown, counted as dense")
    if any(_trains(f, traced) for f in all_facts):
        warnings.append("the model is in training mode; it was counted as in eval mode")
    if traced.skipped_hook is not None:
        warnings.append(f"hooks were not run ({traced.skipped_hook}): what they add is not counted")
    warnings.extend(traced.notes)
    return Counts(
        tuple(c for c in counted if c.facts.kind != OpKind.FREE and not _empty_quantize(c)),
        tuple(uncounted),
        tuple(warnings),
        traced.input_shape,
        traced.method,
    )


def _value_bits(all_facts: list[NodeFacts]) -> dict[torch.fx.Node, int]:
    """Width of the values each node outputs, where a quantizer bounds it: set by quantize and
    fake-quantize nodes, kept through free nodes that do not change the dtype (views, cat).
    A PT2E dequantize keeps its quantizer's width: the op reading it computes on those values."""
    bits: dict[torch.fx.Node, int] = {}
    for facts in all_facts:
        if facts.kind == OpKind.QUANTIZE and facts.quant_bits is not None:
            bits[facts.node] = facts.quant_bits
        elif facts.kind == OpKind.FREE and facts.inputs and facts.output is not None:
            known = [bits[n] for n in facts.input_nodes if n in bits]
            if known and facts.output.dtype == facts.inputs[0].dtype:
                bits[facts.node] = max(known)
    return bits


def _node_bits(
    facts: NodeFacts,
    value_bits: dict[torch.fx.Node, int],
    declared: Sequence[BitsDeclaration],
    default_bits: int,
) -> NodeBits:
    weight = facts.weight
    weight_bits = width(weight.tensor.dtype, weight.bits, default_bits) if weight else None
    inputs = (
        width(info.dtype, value_bits.get(node), default_bits)
        for node, info in zip(facts.input_nodes, facts.inputs, strict=True)
    )
    return resolve(facts.module, weight_bits, inputs, declared, default_bits)


def _trains(facts: NodeFacts, traced: TracedModel) -> bool:
    """A layer whose training mode changes what it computes (BatchNorm, dropout)."""
    if facts.node.op != "call_module":
        return False
    module = traced.root.get_submodule(str(facts.node.target))
    stateful = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)
    return isinstance(module, stateful) and module.training


def _empty_quantize(counted: CountedNode) -> bool:
    """A dequantize that stores nothing is pure bookkeeping: no row in the report."""
    return counted.facts.kind == OpKind.QUANTIZE and not counted.cost.stored


def _visible(facts: NodeFacts, rules: RuleSet) -> bool:
    """Whether the rule set counts this node at all (a module-hook counter sees only modules,
    so under such rules an op without a formula is not "uncounted": it is invisible)."""
    kinds = rules.counted.kinds
    if kinds is None or facts.kind == OpKind.FREE:
        return True
    return facts.kind in kinds and (facts.as_module or not rules.counted.modules_only)


def _label(facts: NodeFacts) -> str:
    return facts.module or facts.node.name


def _charge_once(cost: NodeCost, charged: set[int]) -> NodeCost:
    kept = tuple(s for s in cost.stored if s.identity not in charged)
    charged.update(s.identity for s in kept)
    if len(kept) == len(cost.stored):
        return cost
    note = cost.note or "shares stored values counted at an earlier node"
    return NodeCost(cost.ops, kept, note)


def _tensor_row(
    facts: NodeFacts,
    key: str,
    tensor: torch.Tensor,
    declared: Sequence[BitsDeclaration],
    charged: set[int],
    note: str,
    default_bits: int,
) -> CountedNode | None:
    identity = id(tensor)
    if identity in charged:
        return None
    charged.add(identity)
    bits = resolve(facts.module, width(tensor.dtype, None, default_bits), (), declared,
                   default_bits)
    stored_bits = bits.weight or dtype_bits(tensor.dtype)
    stored = Stored(key, identity, tensor_stats(tensor.detach()), stored_bits)
    return CountedNode(facts, NodeBits(stored_bits, bits.act), NodeCost(Ops(), (stored,), note))


def _orphans(
    facts: NodeFacts,
    traced: TracedModel,
    declared: Sequence[BitsDeclaration],
    charged: set[int],
    default_bits: int,
    note: str = "operations not counted",
) -> list[CountedNode]:
    """A module's parameters no formula stored (an uncounted module's, or a registered formula's
    that stores none) are still stored: charge each once."""
    if facts.node.op != "call_module":
        return []
    module = traced.root.get_submodule(str(facts.node.target))
    rows = []
    for name, tensor in module.named_parameters():
        as_parameter = NodeFacts(
            facts.node, OpKind.PARAMETER, facts.module, facts.target, (), None, {}, {}
        )
        row = _tensor_row(
            as_parameter, f"{facts.module}.{name}", tensor, declared, charged, note,
            default_bits,
        )
        if row is not None:
            rows.append(row)
    return rows


def _unclaimed_tensors(
    traced: TracedModel,
    all_facts: list[NodeFacts],
    declared: Sequence[BitsDeclaration],
    charged: set[int],
    default_bits: int,
) -> list[CountedNode]:
    """Stored tensors the graph reads that no formula stored (a class token added to x, a
    quantization scale, a matrix an uncounted op reads) are values needed for inference: each is
    charged once, as a parameter, even though no layer owns it."""
    claimed = {  # a folded BatchNorm's statistics are consumed by the fold, not stored
        operand.identity
        for facts in all_facts
        if facts.kind not in (None, OpKind.FREE)
        for role, operand in facts.operands.items()
        if role in LAYER_ROLES
    }
    charged.update(claimed)
    rows = []
    for facts in all_facts:  # parameters of a leaf layer that its formula did not store
        if facts.node.op == "call_module" and facts.kind not in (None, OpKind.FREE):
            rows.extend(_orphans(facts, traced, declared, charged, default_bits, ""))
    for node in traced.graph.nodes:
        if node.op != "get_attr" or not node.users:
            continue
        owner, _, name = str(node.target).rpartition(".")
        value = getattr(traced.root.get_submodule(owner) if owner else traced.root, name, None)
        if not isinstance(value, torch.Tensor):
            continue
        facts = NodeFacts(node, OpKind.PARAMETER, owner, "tensor", (), None, {}, {})
        row = _tensor_row(facts, str(node.target), value, declared, charged, "", default_bits)
        if row is not None:
            rows.append(row)
    return rows


def summarize(counts: Counts, rules: RuleSet, baseline: Baseline, freebie: bool = True) -> Report:
    """Apply the freebie (when allowed and eligible), convert to 32-bit equivalents, and score."""
    applied, reason = _freebie(counts, rules, freebie)
    cap = rules.freebie.bits if applied else None
    formats = rules.sparsity.storage
    params_factor, ops_factor = _global_sparsity_factors(counts, rules)
    rows = []
    for counted in counts.nodes:
        storage_bits = 0.0
        layer_format = ""
        for stored in counted.cost.stored:
            allowed = formats if stored.maskable else ("dense",)
            choice = cheapest_storage(stored.stats, _capped(stored.bits, cap), allowed)
            storage_bits += choice.bits
            layer_format = layer_format or choice.format
        ops = counted.cost.ops
        mult_bit_ops = ops.mults * cap if cap is not None else ops.mult_bit_ops
        effective_ops = (mult_bit_ops + ops.add_bit_ops) / 32 * ops_factor
        rows.append((counted, storage_bits * params_factor, layer_format, effective_ops))
    params = sum(r[1] for r in rows) / 32
    total_ops = sum(r[3] for r in rows)
    params_score = params / baseline.params
    ops_score = total_ops / baseline.ops
    score = params_score + ops_score
    layers = tuple(
        _layer(counted, storage_bits, fmt, effective_ops, baseline, score, label)
        for (counted, storage_bits, fmt, effective_ops), label in zip(
            rows, _labels([r[0].facts for r in rows]), strict=True
        )
    )
    return Report(
        score=score,
        params_score=params_score,
        ops_score=ops_score,
        params=params,
        ops=total_ops,
        mults=sum(c.cost.ops.mults for c in counts.nodes),
        adds=sum(c.cost.ops.adds for c in counts.nodes),
        freebie=applied,
        freebie_reason=reason,
        rules=rules.name,
        baseline=baseline,
        input_shape=counts.input_shape,
        trace_method=counts.trace_method,
        layers=layers,
        uncounted=counts.uncounted,
        warnings=counts.warnings,
    )


def _global_sparsity_factors(counts: Counts, rules: RuleSet) -> tuple[float, float]:
    """Whole-model factors of the course rules, measured over conv and linear weights:
    density (1 - zeros) for the parameter part, and 1 - p_s for the ops part, where p_s is the
    fraction of weights lying in filters that are entirely zero."""
    policy = rules.sparsity
    if policy.params_scale == "none" and policy.ops_scale == "none":
        return 1.0, 1.0
    weights = [
        counted.cost.stored[0].stats
        for counted in counts.nodes
        if counted.facts.spec is not None and Trait.DOT_PRODUCT in counted.facts.spec.traits
        and counted.cost.stored
    ]
    total = sum(w.numel for w in weights) or 1
    zeros = sum(w.zeros for w in weights)
    in_zero_filters = sum((w.channels - w.nonzero_channels) * (w.numel // w.channels)
                          for w in weights)
    params_factor = 1 - zeros / total if policy.params_scale == "density" else 1.0
    ops_factor = 1 - in_zero_filters / total if policy.ops_scale == "filter_density" else 1.0
    return params_factor, ops_factor


def _capped(bits: int, cap: int | None) -> int:
    return min(bits, cap) if cap is not None else bits


def _freebie(counts: Counts, rules: RuleSet, allowed: bool) -> tuple[bool, str]:
    if not rules.freebie.enabled:
        return False, f"rule set {rules.name} has no freebie"
    if not allowed:
        return False, "turned off by the user"
    floor = rules.freebie.bits
    # Layers first, so that the reason names a layer rather than a quantize node.
    ordered = sorted(counts.nodes, key=lambda c: c.facts.kind in _NOT_LAYERS)
    for counted in ordered:
        bits = counted.bits
        if bits.act < floor or (bits.weight is not None and bits.weight < floor):
            where = counted.facts.module or counted.facts.node.name
            return False, f"{where} uses {bits.weight or '-'}/{bits.act}-bit weights/activations"
    return True, f"no weight or activation below {floor} bits"


def _labels(all_facts: list[NodeFacts]) -> list[str]:
    """A layer is named by its module path when it is that module's only row, else path/node."""
    per_module = Counter(f.module for f in all_facts)
    return [
        f.module if f.module and per_module[f.module] == 1
        else f"{f.module}/{f.node.name}" if f.module
        else f.node.name
        for f in all_facts
    ]


def _layer(
    counted: CountedNode,
    storage_bits: float,
    storage_format: str,
    effective_ops: float,
    baseline: Baseline,
    score: float,
    label: str,
) -> Layer:
    facts = counted.facts
    stored = counted.cost.stored
    values = sum(s.stats.numel for s in stored)
    weights = [s.stats for s in stored if s.maskable]  # sparsity: of weights, not biases
    zeros = sum(w.zeros for w in weights)
    weight_values = sum(w.numel for w in weights)
    layer_score = storage_bits / 32 / baseline.params + effective_ops / baseline.ops
    return Layer(
        name=label,
        node=facts.node.name,
        module=facts.module,
        op=facts.kind or "",
        target=facts.target,
        output_shape=per_example(facts.output.shape) if facts.output is not None else (),
        params=values,
        weight_bits=counted.bits.weight,
        act_bits=counted.bits.act,
        sparsity=zeros / weight_values if weight_values else 0.0,
        storage_format=storage_format,
        storage_bits=storage_bits,
        mults=counted.cost.ops.mults,
        adds=counted.cost.ops.adds,
        effective_ops=effective_ops,
        share=layer_score / score if score else 0.0,
        note=counted.cost.note,
    )
