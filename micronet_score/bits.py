"""Bit widths of weights and activations: user declarations first, then what the tensors say.

A declaration `PATTERN=W[/A]` applies to every module whose path matches the fnmatch pattern, and
to the modules below it (`dense3` covers `dense3.5.conv2`). When several match, the last one given
wins, so a broad declaration can be refined by a narrower one after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

# Parsed without torch (the command line checks them before any work); re-exported here.
from micronet_score.bit_declarations import BitsDeclaration as BitsDeclaration
from micronet_score.bit_declarations import declarations as declarations
from micronet_score.bit_declarations import parse_declaration as parse_declaration

_DTYPE_BITS: dict[torch.dtype, int] = {
    torch.float64: 64,
    torch.float32: 32,
    torch.float16: 16,
    torch.bfloat16: 16,
    torch.qint8: 8,
    torch.quint8: 8,
    torch.int8: 8,
    torch.uint8: 8,
    torch.qint32: 32,
    torch.int32: 32,
    torch.int64: 64,
    torch.bool: 1,
}
QUANTIZED = frozenset({torch.qint8, torch.quint8, torch.qint32})


def dtype_bits(dtype: torch.dtype) -> int:
    return _DTYPE_BITS.get(dtype, 32)


def _width(dtype: torch.dtype, default_bits: int) -> int:
    return default_bits if dtype == torch.float32 else dtype_bits(dtype)


@dataclass(frozen=True)
class NodeBits:
    """Widths that one node computes with. `weight` is None for nodes without stored weights."""

    weight: int | None
    act: int
    declared_weight: int | None = None

    def stored(self, dtype_width: int | None) -> int:
        """Width of a layer's other stored values (bias, folded BatchNorm shift): the
        declared width when a declaration covers the layer, else their own."""
        return self.declared_weight or dtype_width or self.weight or 32

    @property
    def mult(self) -> int:
        """A product counts at the wider of its two inputs."""
        return max(self.weight or 0, self.act)


def width(dtype: torch.dtype, known: int | None, default_bits: int = 32) -> int | None:
    """Width of a value: what a quantizer bounds it to, else its dtype's (a float32 counts at the
    rule set's base precision). None for integer data such as indices, which carries no width."""
    if known is not None:
        return known
    if dtype.is_floating_point or dtype in QUANTIZED:
        return _width(dtype, default_bits)
    return None


def resolve(
    module: str,
    weight: int | None,
    inputs: Iterable[int | None],
    declared: Sequence[BitsDeclaration],
    default_bits: int = 32,
) -> NodeBits:
    """Widths for one node: the last matching declaration, else the widths its tensors have
    (`weight` and `inputs` as computed by `width`)."""
    declared_weight: int | None = None
    declared_act: int | None = None
    for declaration in declared:
        if declaration.matches(module):
            declared_weight = declaration.weight or declared_weight
            declared_act = declaration.act or declared_act
    weight_bits = None
    if weight is not None:
        weight_bits = declared_weight or weight
    widths = [w for w in inputs if w is not None]
    act_bits = declared_act or (max(widths) if widths else default_bits)
    return NodeBits(weight_bits, act_bits, declared_weight)


def unmatched(declared: Sequence[BitsDeclaration], modules: Iterable[str]) -> list[str]:
    """Declared patterns that match no module path: almost always a typo worth a warning."""
    paths = list(modules)
    return [d.pattern for d in declared if d.pattern != "*" and not any(map(d.matches, paths))]
