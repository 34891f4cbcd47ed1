"""Frozen dataclasses as the schema of a YAML file: each field's type, plus one `Spec` in its
metadata (`field(metadata=spec(...))`), says which values the file may give it. `build` checks a
parsed document against a dataclass and constructs it, so the fields are declared once.

Types are strict: a bool is not a number, a string is not a bool (`'no'` quoted is text), a float
is not an int; numbers are finite and within the field's bounds. Every refusal is a `UserError` of
one line naming the file, the key path (`activations.relu.mults`, `counted.kinds[2]`) and what is
valid. A hand-written checker rather than pydantic: the CLI lists rule sets without importing
pydantic, and the messages and the checks across keys (a formula per op kind) are ours anyway.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Collection, Mapping
from dataclasses import Field, dataclass, fields, is_dataclass
from enum import Enum
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from micronet_score.errors import UserError

T = TypeVar("T")
SPEC_KEY = "micronet_score.schema"
MAX_TEXT = 200
_HINTS: dict[type, dict[str, Any]] = {}  # resolving the annotations is most of a load's time


@dataclass(frozen=True)
class Spec:
    """What a field accepts beyond its type. Bounds and choices apply to every number or text in
    the value (each item of a list, each value of a mapping)."""

    low: float = -math.inf
    high: float = math.inf
    # Choices and keys may be given as a function, called when a file is checked: the op table's
    # kinds are only known once every spec is registered.
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    keys: frozenset[str] | Callable[[], frozenset[str]] | None = None  # a mapping's allowed keys
    all_keys: bool = False  # a mapping must give every allowed key
    items: tuple[int, int] = (0, 64)  # a list's least and most items
    check: Callable[[Any, str], str | None] | None = None  # (value, key path) -> problem or None
    loaded: bool = True  # False: the loader fills it (e.g. the file's path); not a key in the file


def spec(**options: Any) -> dict[str, Spec]:
    """The metadata of a field with a Spec: `bits: int = field(metadata=spec(low=1, high=64))`."""
    return {SPEC_KEY: Spec(**options)}


def build(cls: type[T], data: Any, where: str, path: str = "", **filled: Any) -> T:
    """`cls` from the mapping `data`, checked against the fields' types and specs.

    `where` names the file in messages and `path` the key of `data` in it ("" for the whole
    file); `filled` gives the fields marked `loaded=False`. Raises UserError.
    """
    table = _table(data, where, path)
    declared = {f.name: f for f in fields(cls) if _spec_of(f).loaded}  # type: ignore[arg-type]
    check_keys(table, declared, declared, where, path)
    hints = _HINTS.get(cls) or _HINTS.setdefault(cls, get_type_hints(cls))
    values = {}
    for name, declaration in declared.items():
        key_path = _join(path, name)
        field_spec = _spec_of(declaration)
        value = _value(hints[name], table[name], field_spec, where, key_path)
        problem = field_spec.check(value, key_path) if field_spec.check else None
        if problem:
            raise UserError(f"{where}: {problem}")
        values[name] = value
    return cls(**values, **filled)


def text(value: Any, where: str, path: str) -> str:
    """A one-line printable string of 1 to MAX_TEXT characters (for a key outside any dataclass)."""
    return _value(str, value, Spec(), where, path)  # type: ignore[no-any-return]


def check_keys(table: Mapping[Any, Any], valid: Collection[str], required: Collection[str],
               where: str, path: str) -> None:
    """Refuse a key not in `valid` (listing them), then a missing `required` one."""
    for key in table:
        if not isinstance(key, str) or key not in valid:
            raise UserError(f"{where}: unknown key '{_join(path, key)}'; "
                            f"valid keys: {', '.join(sorted(valid))}")
    for key in sorted(set(required) - set(table)):
        raise UserError(f"{where}: missing key '{_join(path, key)}'")


def show(value: Any) -> str:
    """A value as a message quotes it: YAML spelling for true/false/null, text quoted, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, int) and value.bit_length() > 10_000:  # too long for repr (4300 digits)
        return f"a number of {len(hex(value)) - 2} hex digits"
    shown = repr(value) if isinstance(value, str | int | float) else type(value).__name__
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _value(tp: Any, value: Any, field_spec: Spec, where: str, path: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = (arm for arm in args if arm is not type(None))
        return _value(tp, value, field_spec, where, path)
    if is_dataclass(tp):
        return build(tp, value, where, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: '{path}' must be true or false, got {show(value)}")
        return value
    if tp in (int, float):
        return _number(tp, value, field_spec, where, path)
    if tp is str:
        return _text(value, field_spec, where, path)
    if isinstance(tp, type) and issubclass(tp, Enum):
        valid = [m.value for m in tp]
        if not isinstance(value, str) or value not in valid:
            raise UserError(f"{where}: unknown value {show(value)} for '{path}'; "
                            f"valid: {', '.join(valid)}")
        return tp(value)
    if origin in (tuple, frozenset):
        if not isinstance(value, list):
            raise UserError(f"{where}: '{path}' must be a list, got {show(value)}")
        least, most = field_spec.items
        if not least <= len(value) <= most:
            raise UserError(f"{where}: '{path}' must have {least} to {most} items, "
                            f"got {len(value)}")
        return origin(_value(args[0], item, field_spec, where, f"{path}[{i}]")
                      for i, item in enumerate(value))
    if origin is Mapping:
        return _mapping(args, value, field_spec, where, path)
    raise TypeError(f"schema: no rule for the type {tp!r} of '{path}'")


def _number(tp: type, value: Any, field_spec: Spec, where: str, path: str) -> int | float:
    wanted = (int,) if tp is int else (int, float)
    # Compared as given (float() of a 400-digit int would overflow); NaN fails every comparison.
    valid = (isinstance(value, wanted) and not isinstance(value, bool)
             and field_spec.low <= value <= field_spec.high)
    if not valid:
        kind = "a whole number" if tp is int else "a number"
        raise UserError(f"{where}: '{path}' must be {kind} from {_bound(field_spec.low)} to "
                        f"{_bound(field_spec.high)}, got {show(value)}")
    return tp(value)  # type: ignore[no-any-return]


def _text(value: Any, field_spec: Spec, where: str, path: str) -> str:
    choices = field_spec.choices() if callable(field_spec.choices) else field_spec.choices
    if choices:
        if not isinstance(value, str) or value not in choices:
            raise UserError(f"{where}: unknown value {show(value)} for '{path}'; "
                            f"valid: {', '.join(choices)}")
    elif not (isinstance(value, str) and 0 < len(value) <= MAX_TEXT and value.isprintable()):
        raise UserError(f"{where}: '{path}' must be one line of text of 1 to {MAX_TEXT} "
                        f"characters, got {show(value)}")
    return str(value)


def _mapping(args: tuple[Any, ...], value: Any, field_spec: Spec, where: str,
             path: str) -> dict[Any, Any]:
    key_type, value_type = args
    table = _table(value, where, path)
    valid = field_spec.keys() if callable(field_spec.keys) else field_spec.keys
    if valid is None and isinstance(key_type, type) and issubclass(key_type, Enum):
        valid = frozenset(member.value for member in key_type)
    if valid is not None:
        check_keys(table, valid, valid if field_spec.all_keys else (), where, path)
    return {
        _value(key_type, key, Spec(), where, path): _value(
            value_type, item, field_spec, where, _join(path, key)
        )
        for key, item in table.items()
    }


def _table(data: Any, where: str, path: str) -> dict[Any, Any]:
    if not isinstance(data, dict):
        label = f"'{path}'" if path else "the file"
        raise UserError(f"{where}: {label} must be a mapping of keys to values, got {show(data)}")
    return data


def _join(path: str, key: Any) -> str:
    name = key if isinstance(key, str) else show(key)
    name = name if name.isprintable() else ascii(name)
    name = name if len(name) <= 60 else name[:57] + "..."
    return f"{path}.{name}" if path else name


def _bound(number: float) -> str:
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e7 else f"{number:g}"


def _spec_of(declaration: Field[Any]) -> Spec:
    return declaration.metadata.get(SPEC_KEY, Spec())  # type: ignore[no-any-return]
