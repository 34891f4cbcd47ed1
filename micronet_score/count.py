"""Count a traced graph under a rule set: raw counts with their widths, node by node.

One pass over the nodes; each node's cost comes from its formula in the op table, and the ledger
charges storage shared by several nodes (a module called twice, tied weights) once, to its first
user. `micronet_score.scoring` turns the counts into a scored report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx

from micronet_score.bits import BitsDeclaration, NodeBits, resolve, unmatched, width
from micronet_score.errors import UserError
from micronet_score.facts import NodeFacts, gather_facts
from micronet_score.folding import batch_norm_folds, folded_shift
from micronet_score.graph import TracedModel
from micronet_score.ledger import CountedNode, Ledger
from micronet_score.opkinds import OpKind
from micronet_score.ops.cost import FormulaContext, NodeCost, Ops
from micronet_score.ops.formulas_core import with_fused_activation, with_qparams
from micronet_score.ops.index import formula_of
from micronet_score.results import Uncounted
from micronet_score.rules import RuleSet


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
    """Count every node of `traced` under `rules`: raw counts with their widths per node, the
    nodes no formula covers (uncounted, never guessed) and warnings. Raises UserError for a
    model prepared for quantization but not converted."""
    all_facts = gather_facts(traced)
    folds = batch_norm_folds(all_facts) if rules.batch_norm.fold else {}
    folded_bias = {conv: folded_shift(bn, _label(conv)) for bn, conv in folds.items()}
    ledger = Ledger(declared, rules.default_bits)
    value_bits = _value_bits(all_facts)
    constant = _constant_nodes(traced)
    counted: list[CountedNode] = []
    uncounted: list[Uncounted] = []
    for facts in all_facts:
        if not _visible(facts, rules):
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
            stats=ledger.stats,
            folded_bias=folded_bias.get(facts),
            folded_into=_label(folds[facts]) if facts in folds else None,
        )
        cost = _cost(facts, context)
        if cost is None:  # no spec, or its formula cannot count this node exactly: never guess
            uncounted.append(Uncounted(facts.node.name, facts.target, facts.module))
            counted.extend(ledger.module_parameters(facts, traced))
            continue
        if facts.node in constant and (cost.ops.mults or cost.ops.adds):
            # Arithmetic on values the graph builds itself, such as gather indices from
            # `arange`: the same at every inference, so computed once, offline.
            cost = NodeCost(Ops(), cost.stored, "built from constants: computed once, offline")
        counted.append(CountedNode(facts, bits, ledger.charge(cost)))
    counted.extend(ledger.unclaimed(traced, all_facts))
    modules = {name for name, _ in traced.root.named_modules()}
    warnings = [f"--bits pattern '{p}' matches no module" for p in unmatched(declared, modules)]
    if ledger.zeros_unknown:
        warnings.append("weights are on the meta device: zeros unknown, counted as dense")
    if any(_trains(f, traced) for f in all_facts):
        warnings.append("the model is in training mode; it was counted as in eval mode")
    if traced.skipped_hook is not None:
        warnings.append(f"hooks were not run ({traced.skipped_hook}): what they add is not counted")
    warnings.extend(traced.notes)
    return Counts(
        tuple(c for c in counted if not c.facts.free and not _empty_quantize(c)),
        tuple(uncounted),
        tuple(warnings),
        traced.input_shape,
        traced.method,
    )


def _constant_nodes(traced: TracedModel) -> set[torch.fx.Node]:
    """Nodes computed from values the graph builds itself (`arange`, `full`, numbers): neither
    an input of the model nor a stored tensor reaches them. Core-ATen programs compute gather
    indices this way (reflect pads, nearest-exact and linear resizes, roll, triu)."""
    reached: set[torch.fx.Node] = set()
    built: set[torch.fx.Node] = set()
    for node in traced.graph.nodes:
        if node.op in ("placeholder", "get_attr") or any(
            n in reached for n in node.all_input_nodes
        ):
            reached.add(node)
        elif node.op in ("call_function", "call_method"):
            built.add(node)
    return built


def _cost(facts: NodeFacts, context: FormulaContext) -> NodeCost | None:
    """The node's formula under the rule set's variant, with what a fused activation and stored
    quantization parameters add; None when no formula counts the node."""
    if facts.kind is None:
        return None
    variant = context.rules.formulas.get(facts.kind, "micronet")
    try:
        cost = formula_of(facts.kind, variant)(facts, context)
    except Exception as error:  # a formula's bug (or a plugin's) names its kind and node
        raise UserError(f"the {facts.kind!r} formula failed on node '{facts.node.name}' "
                        f"({type(error).__name__}: {error})") from error
    if cost is None:
        return None
    assert isinstance(cost, NodeCost), f"the {facts.kind} formula returned {cost!r}"
    if facts.fused is not None:
        cost = with_fused_activation(cost, facts, context)
    return with_qparams(cost, facts)


def _value_bits(all_facts: list[NodeFacts]) -> dict[torch.fx.Node, int]:
    """Width of the values each node outputs, where a quantizer bounds it: set by quantize and
    fake-quantize nodes, kept through free nodes that do not change the dtype (views, cat).
    A PT2E dequantize keeps its quantizer's width: the op reading it computes on those values."""
    bits: dict[torch.fx.Node, int] = {}
    for facts in all_facts:
        if facts.kind == OpKind.QUANTIZE and facts.quant_bits is not None:
            bits[facts.node] = facts.quant_bits
        elif facts.free and facts.inputs and facts.output is not None:
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
    if kinds is None or facts.free:
        return True
    return facts.kind in kinds and (facts.as_module or not rules.counted.modules_only)


def _label(facts: NodeFacts) -> str:
    return facts.module or facts.node.name
