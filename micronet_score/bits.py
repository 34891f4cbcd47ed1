"""Bit widths of weights and activations: user declarations first, then what the tensors say.

A declaration `PATTERN=W[/A]` applies to every module whose path matches the fnmatch pattern, and
to the modules below it (`dense3` covers `dense3.5.conv2`). When several match, the last one given
wins, so a broad declaration can be refined by a narrower one after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

from micronet_score.errors import UserError

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
_DECLARATION = re.compile(r"^(?P<pattern>[^=]+)=(?P<weight>\d+)(?:/(?P<act>\d+))?$")


@dataclass(frozen=True)
class BitsDeclaration:
    """Bits declared for the modules matching `pattern`; None leaves that part to the tensors."""

    pattern: str
    weight: int | None
    act: int | None

    def matches(self, path: str) -> bool:
        return fnmatchcase(path, self.pattern) or fnmatchcase(path, f"{self.pattern}.*")


def dtype_bits(dtype: torch.dtype) -> int:
    return _DTYPE_BITS.get(dtype, 32)


def _width(dtype: torch.dtype, default_bits: int) -> int:
    return default_bits if dtype == torch.float32 else dtype_bits(dtype)


def parse_declaration(text: str) -> BitsDeclaration:
    """Parse `PATTERN=W` or `PATTERN=W/A`, e.g. `dense3=8/8` or `*.conv2=4`.

    Without `/A` only the weights are declared; activations keep the width their tensors have.
    """
    match = _DECLARATION.match(text.strip())
    if match is None:
        raise UserError(
            f"malformed bit declaration '{text}': expected PATTERN=W or PATTERN=W/A, "
            "e.g. --bits 'dense3=8/8'"
        )
    weight = _check_width(int(match["weight"]), text)
    act = _check_width(int(match["act"]), text) if match["act"] else None
    return BitsDeclaration(match["pattern"].strip(), weight, act)


def _check_width(bits: int, text: str) -> int:
    if not 1 <= bits <= 64:
        raise UserError(f"bit width out of range in '{text}': use 1 to 64 bits")
    return bits


def declarations(
    bits: Sequence[str] | Mapping[str, str | int] | None,
    weight_bits: int | None = None,
    act_bits: int | None = None,
) -> tuple[BitsDeclaration, ...]:
    """All declarations in priority order (later wins); global widths come first."""
    found: list[BitsDeclaration] = []
    if weight_bits is not None or act_bits is not None:
        for value in (weight_bits, act_bits):
            if value is not None:
                _check_width(value, str(value))
        found.append(BitsDeclaration("*", weight_bits, act_bits))
    if isinstance(bits, Mapping):
        found.extend(parse_declaration(f"{pattern}={value}") for pattern, value in bits.items())
    elif bits is not None:
        found.extend(parse_declaration(text) for text in bits)
    return tuple(found)


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
