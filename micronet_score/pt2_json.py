"""Strict checks of a `.pt2` archive's JSON, turning it into torch's schema objects.

torch.export's deserializer trusts this JSON: names become identifiers in the Python source that
torch.fx generates and `exec`s, symbolic sizes go through `sympy.sympify` (an `eval`),
`guards_code` is `exec`ed by `ExportedProgram.module()`, tree specs can import modules, and node
targets are looked up by name. So every field is checked against the narrowest form
`torch.export.save` writes for an ordinary model (schema of torch/_export/serde/schema.py), unknown
fields and rarely used kinds (custom objects, subgraphs, effect tokens) are refused, and each
symbolic expression is rebuilt from an allow-list of sympy constructors, so the string torch
parses is ours, not the file's. A refusal raises `Refused` with one line saying where.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import keyword
import re
import types
import typing
from collections.abc import Callable
from enum import IntEnum
from typing import Any, TypeVar

import sympy
import torch
from torch._export.serde import schema
from torch._export.serde.serialize import _SYM_OPS
from torch._export.serde.union import _Union
from torch.utils._sympy import functions as sympy_functions

T = TypeVar("T")


class Refused(Exception):
    """Part of the JSON is not what torch.export.save writes for a model (one line: where, what)."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FQN = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")  # parameter and buffer paths: dense1.0.w
_CALL_PATH = re.compile(r"([A-Za-z0-9_]+(@[0-9]+)?(\.[A-Za-z0-9_]+(@[0-9]+)?)*)?")
_OP = re.compile(r"torch\.ops(\.[A-Za-z_][A-Za-z0-9_]*){3}")  # torch.ops.<ns>.<op>.<overload>
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_SYMBOL = re.compile(r"[a-z]{1,8}[0-9]{1,9}")
_RANGE_KEY = re.compile(r"[a-z0-9_*+/%() -]{1,200}")  # str() of a symbol or simple expression
_DEVICE = re.compile(r"[a-z]{1,32}")
_VERIFIER = re.compile(r"ATEN|TRAINING")
_SYM_OP_TARGETS = frozenset(f"{op.__module__}.{op.__name__}" for op in _SYM_OPS)
_MAX_EXPR = 4000

# Union members an ordinary model never has: subgraphs (higher-order ops), TorchScript objects,
# operator arguments and effect tokens. They reach code paths this checker does not vouch for.
_REFUSED_KINDS = frozenset({
    "Argument.as_graph", "Argument.as_custom_obj", "Argument.as_operator",
    "InputSpec.custom_obj", "InputSpec.token", "OutputSpec.token",
})
_MUST_BE_EMPTY = frozenset({
    "GraphModule.metadata", "GraphModule.treespec_namedtuple_fields", "Graph.custom_obj_values",
})
_NODE_METADATA = frozenset({"stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn",
                            "from_node", "custom"})
_SPEC_SEQUENCES = frozenset({"builtins.tuple", "builtins.list"})
_SPEC_MAPPINGS = frozenset({"builtins.dict", "collections.OrderedDict"})


def parse(data: bytes) -> object:
    """A member's JSON document. Raises Refused."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise Refused("is not a JSON document") from error


def document(cls: type[T], data: object) -> T:
    """`data` checked and built as the schema dataclass `cls`: `schema.ExportedProgram` for
    `models/model.json`, `schema.PayloadConfig` for a weights or constants config. Raises
    Refused."""
    checked = _build(cls, data, "", "")
    assert isinstance(checked, cls)
    return checked


def _build(hint: Any, value: object, where: str, rule: str) -> object:
    """Check `value` against the schema type `hint` and build it; `rule` names the field."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):  # `T | None`
        return None if value is None else _build(typing.get_args(hint)[0], value, where, rule)
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_build(item, v, f"{where}[{i}]", rule) for i, v in enumerate(_is(list, value,
                                                                                   where))]
    if origin is dict:
        return _mapping(typing.get_args(hint)[1], _is(dict, value, where), where, rule)
    if isinstance(hint, type) and issubclass(hint, _Union):
        return _union(hint, _is(dict, value, where), where)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, _is(dict, value, where), where)
    if hint is bool:
        return _is(bool, value, where)
    if hint is int:
        return _integer(value, where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refused(f"{where} is {type(value).__name__}, expected a number")
        return float(value)
    if isinstance(hint, type) and issubclass(hint, IntEnum):
        number = _integer(value, where)
        if number not in {member.value for member in hint}:
            raise Refused(f"{where} is {number}, not a valid {hint.__name__}")
        return hint(number)
    if hint is str:
        return _STRING_RULES.get(rule, _name)(_is(str, value, where), where)
    raise Refused(f"{where} has a type this checker does not know ({hint})")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, globalns=vars(schema))


def _dataclass(cls: Any, value: dict[str, object], where: str) -> object:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := sorted(set(value) - set(fields)):
        raise Refused(f"{where or 'the document'} has an unknown field {unknown[0][:80]!r}")
    built: dict[str, object] = {}
    for name, field in fields.items():
        rule = f"{cls.__name__}.{name}"
        if name not in value:
            missing = dataclasses.MISSING
            if field.default is missing and field.default_factory is missing:
                raise Refused(f"{where or 'the document'} lacks the field '{name}'")
            continue
        if rule in _MUST_BE_EMPTY and value[name]:
            raise Refused(f"{_at(where, name)} is not empty")
        built[name] = _build(hints[name], value[name], _at(where, name), rule)
    return cls(**built)


def _union(cls: Any, value: dict[str, object], where: str) -> object:
    if len(value) != 1:
        raise Refused(f"{where} should hold exactly one {cls.__name__} kind")
    ((kind, content),) = value.items()
    hints = _hints(cls)
    rule = f"{cls.__name__}.{kind}"
    if kind not in hints:
        raise Refused(f"{where} has an unknown {cls.__name__} kind {kind[:80]!r}")
    if rule in _REFUSED_KINDS:
        raise Refused(f"{where} is a {cls.__name__} of kind '{kind}', which this loader refuses")
    return cls.create(**{kind: _build(hints[kind], content, _at(where, kind), rule)})


def _mapping(item: Any, value: dict[str, object], where: str, rule: str) -> dict[str, object]:
    if rule == "Node.metadata":
        return _node_metadata(value, where)
    check_key = _KEY_RULES.get(rule, _name)
    return {check_key(k, f"{where} key"): _build(item, v, f"{where}['{k}']", rule)
            for k, v in value.items()}


def _strings(value: object) -> list[str]:
    """Every string (keys included) inside a decoded JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value.keys(), *(s for v in value.values() for s in _strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _node_metadata(value: dict[str, object], where: str) -> dict[str, object]:
    for key, text in value.items():
        if key not in _NODE_METADATA:
            raise Refused(f"{where} has the entry {key[:80]!r}, which this loader refuses")
        at = f"{where}['{key}']"
        text = _is(str, text, at)
        # torch.fx copies stack traces into the comments of the code it generates; a carriage
        # return would end the comment there and start a line of code.
        lines = text.split("\n") if key == "stack_trace" else [text]
        if not all(line.isprintable() for line in lines):
            raise Refused(f"{at} holds control characters")
        if key == "source_fn_stack":  # each "name,target": torch looks the target up by name
            for entry in text.split(";"):
                name, _, target = entry.partition(",")
                _name(name, at)
                if not _DOTTED.fullmatch(target) or _dunder(target):
                    raise Refused(f"{at} names {target[:80]!r}, which is not a plain function")
        elif key in ("from_node", "custom"):  # JSON documents torch decodes with json.loads
            try:
                decoded = json.loads(text)
            except ValueError as error:
                raise Refused(f"{at} is not valid JSON") from error
            if not all(item.isprintable() for item in _strings(decoded)):
                raise Refused(f"{at} holds control characters")
    return value


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _is(kind: type, value: object, where: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise Refused(f"{where} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _integer(value: object, where: str) -> int:
    number = _is(int, value, where)
    if not -(2**63) <= number < 2**64:
        raise Refused(f"{where} is out of range")
    return int(number)


def _name(text: str, where: str) -> str:
    """A name that torch.fx writes into generated code as an identifier."""
    if not _NAME.fullmatch(text) or keyword.iskeyword(text) or len(text) > 500:
        raise Refused(f"{where} is {text[:80]!r}, not a plain identifier")
    return text


def _pattern(pattern: re.Pattern[str], what: str) -> Callable[[str, str], str]:
    def check(text: str, where: str) -> str:
        if not pattern.fullmatch(text) or _dunder(text):
            raise Refused(f"{where} is {text[:80]!r}, not {what}")
        return text
    return check


def _dunder(text: str) -> bool:
    """Whether a dotted path has a part like `__class__`, which reaches Python internals."""
    return any(part.startswith("__") for part in re.split(r"[.@]", text))


def _text(text: str, where: str) -> str:
    """A string argument: printable, and no quote or backslash that could close a literal."""
    if not text.isprintable() or any(c in text for c in "'\"\\") or len(text) > 500:
        raise Refused(f"{where} is {text[:80]!r}, which this loader refuses")
    return text


def _target(text: str, where: str) -> str:
    """An operator overload (`torch.ops.aten.conv2d.default`) or a symbolic-size operator.

    The deserializer resolves the target by walking attributes, and would keep any callable it
    reaches; so the walk is done here first, and only a registered operator overload passes.
    """
    if text in _SYM_OP_TARGETS:
        return text
    if _OP.fullmatch(text):
        namespace, op, overload = text.split(".")[2:]
        if not (namespace.startswith("__") or overload.startswith("__")):
            try:
                found = getattr(getattr(getattr(torch.ops, namespace), op), overload)
            except (AttributeError, RuntimeError):
                found = None
            if isinstance(found, torch._ops.OpOverload):
                return text
    raise Refused(f"{where} is {text[:80]!r}, not a registered operator overload")


def _tree_spec(text: str, where: str) -> str:
    """A pytree spec of tuples, lists and dicts only (other types can import modules)."""
    try:
        protocol, root = json.loads(text)
    except (ValueError, TypeError) as error:
        raise Refused(f"{where} is not a tree spec") from error
    if protocol != 1:
        raise Refused(f"{where} has tree spec protocol {protocol!r}, expected 1")
    _spec_node(root, where, 0)
    return text


def _spec_node(node: object, where: str, depth: int) -> None:
    if not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"}:
        raise Refused(f"{where} is not a tree spec")
    kind, context, children = node["type"], node["context"], node["children_spec"]
    if not isinstance(children, list) or depth > 100:
        raise Refused(f"{where} is not a tree spec")
    if kind is None:
        if context is not None or children:
            raise Refused(f"{where} has a malformed leaf")
    elif kind in _SPEC_SEQUENCES:
        if context != "null":
            raise Refused(f"{where} has a malformed {kind}")
    elif kind in _SPEC_MAPPINGS:
        try:
            keys = json.loads(context) if isinstance(context, str) else None
        except ValueError:
            keys = None
        if not isinstance(keys, list) or len(keys) != len(children) or not all(
            isinstance(k, str) and _NAME.fullmatch(k) for k in keys
        ):
            raise Refused(f"{where} has dict keys this loader refuses")
    else:
        raise Refused(f"{where} holds a {str(kind)[:80]!r}, which this loader refuses")
    for child in children:
        _spec_node(child, where, depth + 1)


# Names the deserializer's sympify maps to torch's sympy functions; the rest come from sympy.
_TORCH_SYMPY = ("FloorDiv", "CeilDiv", "CleanDiv", "Mod", "PythonMod", "ModularIndexing",
                "CeilToInt", "FloorToInt")
_SYMPY = ("Add", "Mul", "Max", "Min", "Equality", "Unequality", "StrictLessThan", "LessThan",
          "StrictGreaterThan", "GreaterThan", "And", "Or", "Not")
_SYMPY_CALLS: dict[str, Callable[..., Any]] = {
    **{name: getattr(sympy_functions, name) for name in _TORCH_SYMPY},
    **{name: getattr(sympy, name) for name in _SYMPY},
}
_MAX_POWER = 8  # a tensor of 8 dimensions of one shared size
_ASSUMPTIONS = frozenset({"integer", "positive", "nonnegative", "negative", "nonpositive", "real",
                          "finite", "zero", "nonzero", "rational", "extended_real"})


def _sym_expr(text: str, where: str) -> str:
    """Rebuild a symbolic size (sympy's srepr form) from allowed constructors only; return the
    srepr of the result, so the string torch's deserializer sympifies is ours."""
    if len(text) > _MAX_EXPR:
        raise Refused(f"{where} is too long")
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError) as error:
        raise Refused(f"{where} is not a symbolic expression") from error
    try:
        return str(sympy.srepr(_sym_node(tree, where)))
    except (TypeError, ValueError, ArithmeticError, RecursionError) as error:
        raise Refused(f"{where} is not a valid symbolic expression") from error


def _sym_node(node: ast.expr, where: str) -> Any:
    refused = Refused(f"{where} is not a plain symbolic size (only symbols, integers and "
                      "arithmetic are accepted)")
    if isinstance(node, ast.Name) and node.id in ("true", "false"):
        return sympy.true if node.id == "true" else sympy.false
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise refused
    name, args, keywords = node.func.id, node.args, node.keywords
    if name == "Integer" and len(args) == 1 and not keywords:
        return sympy.Integer(_literal_int(args[0], refused))
    if name == "Symbol" and len(args) == 1 and isinstance(args[0], ast.Constant):
        symbol = args[0].value
        flags = {k.arg: k.value.value for k in keywords if isinstance(k.value, ast.Constant)}
        if not (isinstance(symbol, str) and _SYMBOL.fullmatch(symbol)) or len(flags) != len(
            keywords
        ) or not all(key in _ASSUMPTIONS and type(v) is bool for key, v in flags.items()):
            raise refused
        return sympy.Symbol(symbol, **{str(k): v for k, v in flags.items()})
    if name == "Pow" and len(args) == 2 and not keywords:
        # Strides of a tensor whose dims share one size are powers of it (3*s**2). A small
        # literal exponent only: a large one would make sympy compute a huge number.
        exponent = _sym_node(args[1], where)
        if not (isinstance(exponent, sympy.Integer) and 0 <= int(exponent) <= _MAX_POWER):
            raise refused
        return sympy.Pow(_sym_node(args[0], where), exponent)
    if name in _SYMPY_CALLS and not keywords:
        return _SYMPY_CALLS[name](*(_sym_node(arg, where) for arg in args))
    raise refused


def _literal_int(node: ast.expr, refused: Refused) -> int:
    negative = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
    inner = node.operand if isinstance(node, ast.UnaryOp) and negative else node
    if not isinstance(inner, ast.Constant) or type(inner.value) is not int:
        raise refused
    if inner.value >= 2**63:
        raise refused
    return -inner.value if negative else inner.value


_GUARD_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_GUARD_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod)
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset"})


def _guard(text: str, where: str) -> str:
    """A guard `ExportedProgram.module()` will exec: comparisons of integers and input sizes
    such as `L['x'].size()[0] <= 64`, and nothing else."""
    if len(text) > _MAX_EXPR or not text.isprintable():
        raise Refused(f"{where} is not a plain size guard")
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError) as error:
        raise Refused(f"{where} is not a plain size guard") from error
    if not _guard_node(tree):
        raise Refused(f"{where} is {text[:80]!r}, not a plain size guard")
    return text


def _guard_node(node: ast.expr) -> bool:
    if isinstance(node, ast.Compare):
        return all(isinstance(op, _GUARD_COMPARE) for op in node.ops) and all(
            _guard_node(n) for n in (node.left, *node.comparators))
    if isinstance(node, ast.BoolOp):
        return all(_guard_node(n) for n in node.values)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, _GUARD_ARITHMETIC) and _guard_node(node.left) and _guard_node(
            node.right)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.Not | ast.USub) and _guard_node(node.operand)
    if isinstance(node, ast.Constant):
        return type(node.value) is int and abs(node.value) < 2**63
    if isinstance(node, ast.Name):
        return node.id == "L"
    if isinstance(node, ast.Subscript):
        key = node.slice
        return isinstance(key, ast.Constant) and (
            (isinstance(key.value, str) and bool(_NAME.fullmatch(key.value)))
            or type(key.value) is int
        ) and _guard_node(node.value)
    if isinstance(node, ast.Call):
        method = node.func
        return (not node.args and not node.keywords and isinstance(method, ast.Attribute)
                and method.attr in _GUARD_METHODS and _guard_node(method.value))
    return False


_STRING_RULES: dict[str, Callable[[str, str], str]] = {
    "SymExpr.expr_str": _sym_expr,
    "Node.target": _target,
    "Device.type": _pattern(_DEVICE, "a device type"),
    "Argument.as_string": _text,
    "Argument.as_strings": _text,
    "ConstantValue.as_string": _text,
    "ExportedProgram.torch_version": _text,
    "ExportedProgram.guards_code": _guard,
    "ExportedProgram.verifiers": _pattern(_VERIFIER, "a verifier torch.export writes"),
    "ModuleCallSignature.in_spec": _tree_spec,
    "ModuleCallSignature.out_spec": _tree_spec,
    "ModuleCallEntry.fqn": _pattern(_CALL_PATH, "a module path"),
    **{f"{cls}.{field}": _pattern(_FQN, "a parameter or buffer name") for cls, field in (
        ("InputToParameterSpec", "parameter_name"), ("InputToBufferSpec", "buffer_name"),
        ("InputToTensorConstantSpec", "tensor_constant_name"),
        ("BufferMutationSpec", "buffer_name"), ("ParameterMutationSpec", "parameter_name"),
        ("GradientToParameterSpec", "parameter_name"),
    )},
}
_KEY_RULES: dict[str, Callable[[str, str], str]] = {
    "ExportedProgram.range_constraints": _pattern(_RANGE_KEY, "a symbol"),
    "PayloadConfig.config": _pattern(_FQN, "a parameter or buffer name"),
}
