"""What a formula returns (`NodeCost`: raw counts with the width each is done at, and the values
it stores) and what it may use besides the node's facts (`FormulaContext`).

Counts are raw (one multiplication is 1 whatever its width); `Ops` also keeps each count times its
width in bits, so costs at mixed widths add up and the conversion to 32-bit equivalents happens once
the whole model is known (after the freebie).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from micronet_score.bits import NodeBits

if TYPE_CHECKING:
    from micronet_score.facts import NodeFacts, Operand
    from micronet_score.rules import RuleSet
    from micronet_score.sparsity import WeightStats


@dataclass(frozen=True)
class Ops:
    """Raw counts plus bit-weighted sums (count * width), so costs at mixed widths add up."""

    mults: float = 0.0
    adds: float = 0.0
    mult_bit_ops: float = 0.0
    add_bit_ops: float = 0.0

    @staticmethod
    def at(mults: float, mult_bits: float, adds: float, add_bits: float) -> Ops:
        return Ops(mults, adds, mults * mult_bits, adds * add_bits)

    def __add__(self, other: Ops) -> Ops:
        return Ops(
            self.mults + other.mults,
            self.adds + other.adds,
            self.mult_bit_ops + other.mult_bit_ops,
            self.add_bit_ops + other.add_bit_ops,
        )


@dataclass(frozen=True)
class Stored:
    """Values a node needs kept in memory, at `bits` each, with their zero structure.

    `identity` is the stored tensor's: a tensor read by several nodes is charged once."""

    key: str
    identity: int
    stats: WeightStats
    bits: int
    # Whether zeros may be left out with a mask: weight matrices and kernels only. Biases, folded
    # shifts, norm affines and quantization parameters are always dense (as counting.py does).
    maskable: bool = False


@dataclass(frozen=True)
class NodeCost:
    ops: Ops
    stored: tuple[Stored, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class FormulaContext:
    """Everything a formula may use besides the node's own facts.

    `folded_bias` is a BatchNorm shift that becomes this layer's bias; `folded_into` names the layer
    a BatchNorm disappears into.
    """

    rules: RuleSet
    bits: NodeBits
    accumulator_bits: int
    stats: Callable[[Operand], WeightStats]
    folded_bias: Operand | None = None
    folded_into: str | None = None

    def add_bits(self, natural: int) -> int:
        """Width of a non-accumulating addition: its operands' width, or the accumulator's when
        the rule set does not let additions shrink with the data."""
        return natural if self.rules.add_width == "activation" else self.accumulator_bits


Formula = Callable[["NodeFacts", FormulaContext], "NodeCost | None"]
