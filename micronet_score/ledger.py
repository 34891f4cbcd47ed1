"""The one owner of stored values: each tensor's zero statistics (measured once) and its charge
(once, to its first reader, however often the graph reads it).

Formulas say what a node stores (`NodeCost.stored`); the ledger drops what an earlier node already
charged. After the formulas, it charges what no formula stored: the parameters of an uncounted
layer or of a layer registered with `register_op` whose formula leaves them out, and tensors the
graph reads directly (a class token, a rotary table, a quantization scale). Learned parameters
come out as `parameter` rows, other tensors (buffers, constants captured at trace time) as
`buffer` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from micronet_score.bits import BitsDeclaration, NodeBits, dtype_bits, resolve, width
from micronet_score.facts import LAYER_ROLES, NodeFacts, Operand
from micronet_score.graph import TracedModel
from micronet_score.opkinds import OpKind
from micronet_score.ops.cost import NodeCost, Ops, Stored
from micronet_score.sparsity import WeightStats, tensor_stats


@dataclass(frozen=True)
class CountedNode:
    """A counted node (or a stored tensor charged outside any formula): its facts, the widths
    it computes at and its cost."""

    facts: NodeFacts
    bits: NodeBits
    cost: NodeCost


@dataclass
class Ledger:
    """Charged identities and measured statistics of one count (see the module docstring)."""

    declared: Sequence[BitsDeclaration]
    default_bits: int
    charged: set[int] = field(default_factory=set)
    measured: dict[int, WeightStats] = field(default_factory=dict)

    def stats(self, operand: Operand) -> WeightStats:
        """Zeros of a stored tensor, measured on its first use only."""
        if operand.identity not in self.measured:
            self.measured[operand.identity] = tensor_stats(operand.tensor)
        return self.measured[operand.identity]

    @property
    def zeros_unknown(self) -> bool:
        return any(not stats.known for stats in self.measured.values())

    def charge(self, cost: NodeCost) -> NodeCost:
        """`cost` without the values an earlier node already stored (noted on the row)."""
        kept = tuple(s for s in cost.stored if s.identity not in self.charged)
        self.charged.update(s.identity for s in kept)
        if len(kept) == len(cost.stored):
            return cost
        note = cost.note or "shares stored values counted at an earlier node"
        return NodeCost(cost.ops, kept, note)

    def module_parameters(self, facts: NodeFacts, traced: TracedModel,
                          note: str = "operations not counted") -> list[CountedNode]:
        """A layer's parameters that no formula stored (an uncounted layer's, or a registered
        formula's that stores none): each charged once."""
        if facts.node.op != "call_module":
            return []
        module = traced.root.get_submodule(str(facts.node.target))
        rows = (self._row(facts.node, facts.module, facts.target, f"{facts.module}.{name}",
                          tensor, note, learned=True)
                for name, tensor in module.named_parameters())
        return [row for row in rows if row is not None]

    def unclaimed(self, traced: TracedModel, all_facts: list[NodeFacts]) -> list[CountedNode]:
        """What no formula stored, after every formula ran (see the module docstring)."""
        # A folded BatchNorm's statistics are consumed by the fold, not stored.
        self.charged.update(
            operand.identity
            for facts in all_facts
            if facts.kind is not None and not facts.free
            for role, operand in facts.operands.items()
            if role in LAYER_ROLES
        )
        rows = []
        for facts in all_facts:  # a registered formula may store less than its layer holds
            if facts.node.op == "call_module" and facts.spec is not None \
                    and not facts.spec.builtin:
                rows.extend(self.module_parameters(facts, traced, note=""))
        for node in traced.graph.nodes:
            if node.op != "get_attr" or not node.users:
                continue
            owner_path, _, name = str(node.target).rpartition(".")
            owner = traced.root.get_submodule(owner_path) if owner_path else traced.root
            value = getattr(owner, name, None)
            if not isinstance(value, torch.Tensor):
                continue
            learned = isinstance(value, nn.Parameter) or name in owner._parameters
            row = self._row(node, owner_path, "tensor", str(node.target), value, "", learned)
            if row is not None:
                rows.append(row)
        return rows

    def _row(self, node: torch.fx.Node, module: str, target: str, key: str,
             tensor: torch.Tensor, note: str, learned: bool) -> CountedNode | None:
        identity = id(tensor)
        if identity in self.charged:
            return None
        self.charged.add(identity)
        kind = OpKind.PARAMETER if learned else OpKind.BUFFER
        facts = NodeFacts(node, kind, module, target, (), None, {}, {})
        bits = resolve(module, width(tensor.dtype, None, self.default_bits), (), self.declared,
                       self.default_bits)
        stored_bits = bits.weight or dtype_bits(tensor.dtype)
        stored = Stored(key, identity, tensor_stats(tensor.detach()), stored_bits)
        return CountedNode(facts, NodeBits(stored_bits, bits.act), NodeCost(Ops(), (stored,), note))
