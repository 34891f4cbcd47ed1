"""Bit-width declarations (`--bits PATTERN=W[/A]`, `--weight-bits`, `--act-bits`) parsed and
checked without torch, so that the command line refuses a malformed one before any work.

A declaration applies to every module whose path matches the fnmatch pattern, and to the modules
below it (`dense3` covers `dense3.5.conv2`); `bits.resolve` applies them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from micronet_score.errors import UserError

_DECLARATION = re.compile(r"^(?P<pattern>[^=]+)=(?P<weight>\d+)(?:/(?P<act>\d+))?$")


@dataclass(frozen=True)
class BitsDeclaration:
    """Bits declared for the modules matching `pattern`; None leaves that part to the tensors."""

    pattern: str
    weight: int | None
    act: int | None

    def matches(self, path: str) -> bool:
        return fnmatchcase(path, self.pattern) or fnmatchcase(path, f"{self.pattern}.*")


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
        for option, value in (("--weight-bits", weight_bits), ("--act-bits", act_bits)):
            if value is not None:
                _check_width(value, f"{option} {value}")
        found.append(BitsDeclaration("*", weight_bits, act_bits))
    if isinstance(bits, Mapping):
        found.extend(parse_declaration(f"{pattern}={value}") for pattern, value in bits.items())
    elif bits is not None:
        found.extend(parse_declaration(text) for text in bits)
    return tuple(found)
