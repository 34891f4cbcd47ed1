"""The einsum formula (its spec is in `table_sequence`), with the conventions of
`formulas_sequence`: one product per combination of the contracted labels' values, a sum of n
values n - 1 additions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx

from micronet_score.facts import NodeFacts
from micronet_score.ops.cost import FormulaContext, NodeCost, Ops
from micronet_score.ops.formulas_sequence import _charged, _infos


@dataclass(frozen=True)
class EinsumCount:
    """`sums`: adds of reductions over labels only one operand has (and the output lacks);
    `mults` and `accumulations`: the contraction's products and the adds summing them."""

    mults: int
    sums: int
    accumulations: int


def _terms(args: Sequence[object]) -> tuple[list[list[str]], list[str] | None, list[object]]:
    """Label lists per operand, the output labels (None: implicit) and the operands, from
    `einsum(equation, *operands)`, `einsum(equation, [operands])` or the sublist form
    `einsum(op1, [0, 1], op2, [1, 2], [0, 2])` (`...` an ellipsis)."""
    if isinstance(args[0], str):
        rest = list(args[1:])
        operands = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], list | tuple) else rest
        lhs, arrow, rhs = args[0].replace(" ", "").partition("->")
        split = [_letters(term) for term in lhs.split(",")]
        return split, _letters(rhs) if arrow else None, operands
    pairs = list(args)
    output = [_label(v) for v in _listed(pairs.pop())] if len(pairs) % 2 else None
    labels = [[_label(v) for v in _listed(sub)] for sub in pairs[1::2]]
    return labels, output, pairs[0::2]


def _listed(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _letters(term: str) -> list[str]:
    return [*term.replace("...", "\0")] if term else []


def _label(value: object) -> str:
    return "\0" if value is Ellipsis else f"#{value}"


def einsum_count(terms: Sequence[Sequence[str]], output: Sequence[str] | None,
                 shapes: Sequence[tuple[int, ...]]) -> EinsumCount | None:
    """Arithmetic of an einsum with 1 or 2 operands ("\\0" marks an ellipsis); None for 3 or
    more (the contraction order decides the cost) or an equation that does not fit the shapes.

    Repeated labels in one operand take a diagonal (free). As torch does, labels only one
    operand has and the output lacks are summed out first (numel before - numel after adds).
    One operand: that sum is all (a transpose or diagonal alone is free). Two operands: one
    product per combination of the remaining labels' values, and products - outputs adds.
    """
    if len(terms) not in (1, 2) or len(terms) != len(shapes):
        return None
    spans = [len(shape) - (len(term) - 1) if "\0" in term else 0
             for term, shape in zip(terms, shapes, strict=True)]
    widest = max(spans)
    sizes: dict[str, int] = {}
    operands: list[dict[str, int]] = []
    for term, shape, span in zip(terms, shapes, spans, strict=True):
        labels = [name for label in term for name in (
            [f"...{widest - span + i}" for i in range(span)] if label == "\0" else [label])]
        if len(labels) != len(shape) or span < 0:
            return None
        operands.append(dict(zip(labels, shape, strict=True)))
        for label, size in zip(labels, shape, strict=True):
            sizes[label] = max(sizes.get(label, 1), size)
    counts = [label for term in terms for label in term]
    if output is None:
        once = {c for c in counts if c != "\0" and counts.count(c) == 1}
        out = {f"...{i}" for i in range(widest)} | once
    else:
        out = {name for label in output for name in (
            [f"...{i}" for i in range(widest)] if label == "\0" else [label])}
    if not out <= set(sizes):
        return None
    sums, kept = 0, []
    for i, own in enumerate(operands):
        others = set().union(*(o for j, o in enumerate(operands) if j != i))
        alone = [label for label in own if label not in out and label not in others]
        sums += math.prod(own.values()) - math.prod(s for k, s in own.items() if k not in alone)
        kept.append({k for k in own if k not in alone})
    outputs = math.prod(sizes[label] for label in out)
    if len(operands) == 1:
        return EinsumCount(0, sums, 0)
    products = math.prod(sizes[label] for label in kept[0] | kept[1])
    return EinsumCount(products, sums, products - outputs)


def einsum(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """torch.einsum / aten::einsum with 1 or 2 operands: see `einsum_count`. A stored operand
    is counted dense (its zeros are not skipped) and charged once."""
    terms, output, operands = _terms(facts.node.args)
    infos = _infos(facts)
    shapes = [infos[o].shape for o in operands if isinstance(o, torch.fx.Node) and o in infos]
    count = einsum_count(terms, output, shapes) if len(shapes) == len(operands) else None
    if count is None:
        return None
    act = ctx.bits.act
    ops = (Ops.at(count.mults, ctx.bits.mult, count.accumulations, ctx.accumulator_bits)
           + Ops.at(0, 0, count.sums, ctx.add_bits(act)))
    return NodeCost(ops, _charged(facts, ctx))


# --- torchvision Swin ---------------------------------------------------------------------


