"""Summarize counts into a scored report: the freebie, storage formats, 32-bit equivalents.

One row per counted node (`Row`), costed once; the totals, the score and the per-layer view are
sums over those rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from micronet_score.count import Counts
from micronet_score.facts import NodeFacts
from micronet_score.ledger import CountedNode
from micronet_score.opkinds import OpKind
from micronet_score.ops.spec import Trait
from micronet_score.results import Layer, Report, per_example
from micronet_score.rules import Baseline, RuleSet
from micronet_score.sparsity import cheapest_storage

# Rows that are not layers: the freebie's reason names a layer before them.
_NOT_LAYERS = (OpKind.QUANTIZE, OpKind.PARAMETER, OpKind.BUFFER)


@dataclass(frozen=True)
class Row:
    """One counted node, costed: storage in bits (after the freebie and any whole-model
    density factor), the format the cheapest storage uses, and ops in 32-bit equivalents."""

    counted: CountedNode
    storage_bits: float
    storage_format: str
    effective_ops: float


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
        rows.append(Row(counted, storage_bits * params_factor, layer_format, effective_ops))
    params = sum(row.storage_bits for row in rows) / 32
    total_ops = sum(row.effective_ops for row in rows)
    params_score = params / baseline.params
    ops_score = total_ops / baseline.ops
    score = params_score + ops_score
    labels = _labels([row.counted.facts for row in rows])
    layers = tuple(_layer(row, baseline, score, label)
                   for row, label in zip(rows, labels, strict=True))
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


def _layer(row: Row, baseline: Baseline, score: float, label: str) -> Layer:
    counted, storage_bits, effective_ops = row.counted, row.storage_bits, row.effective_ops
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
        storage_format=row.storage_format,
        storage_bits=storage_bits,
        mults=counted.cost.ops.mults,
        adds=counted.cost.ops.adds,
        effective_ops=effective_ops,
        share=layer_score / score if score else 0.0,
        note=counted.cost.note,
    )
