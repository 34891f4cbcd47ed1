"""The op table resolved against torch: which spec a graph node or a module class computes.

`call_module` nodes are classified by module class, `call_function` nodes by their target (a
dispatcher op by its overload packet, so every overload is covered), `call_method` nodes by method
name. The lookup tables are built once from the registered specs and rebuilt when a user registers
one. Nothing else in the package inspects class or function names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

import torch
import torch.fx
from torch import nn

from micronet_score.ops import spec as table
from micronet_score.ops.spec import OpSpec


@dataclass(frozen=True)
class _Index:
    modules: dict[type, OpSpec]
    functions: dict[object, OpSpec]
    methods: dict[str, OpSpec]
    ops: dict[tuple[str, str], OpSpec]
    fused_relu_modules: tuple[type, ...]
    fused_relu_ops: frozenset[tuple[str, str]]


_INDEX: _Index | None = None
_MODULE_SPECS: dict[type, OpSpec | None] = {}


def _reset() -> None:
    global _INDEX
    _INDEX = None
    _MODULE_SPECS.clear()


table.on_change(_reset)


def _resolve(spelling: object) -> object | None:
    """The object a dotted path names (`torch.nn.functional.conv2d`), or None when it does not
    exist in this environment (an optional package, another torch version)."""
    if not isinstance(spelling, str):
        return spelling
    parts = spelling.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            value: object = import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                value = getattr(value, name)
        except AttributeError:
            return None
        # Inside a symbolic trace a wrapped function is a patch: the original is behind it.
        return getattr(value, "__wrapped__", value) if hasattr(
            value, "__fx_already_patched") else value
    return None


def _op_key(name: str) -> tuple[str, str]:
    namespace, _, op = name.partition("::")
    return namespace, op


def resolve_op_table() -> None:
    """Resolve the table's spellings now. Call it outside a symbolic trace: while tracing,
    `torch.fx.wrap`-ped functions are replaced by patches that would be recorded instead."""
    _index()


def _index() -> _Index:
    global _INDEX
    if _INDEX is not None:
        return _INDEX
    from micronet_score.ops.table_core import FUSED_RELU

    modules: dict[type, OpSpec] = {}
    functions: dict[object, OpSpec] = {}
    methods: dict[str, OpSpec] = {}
    ops: dict[tuple[str, str], OpSpec] = {}
    for spec in table.all_specs():
        for spelling in spec.modules:
            cls = _resolve(spelling)
            if isinstance(cls, type):
                modules[cls] = spec
        for spelling in spec.functions:
            function = _resolve(spelling)
            if function is not None:
                functions[function] = spec
        methods.update(dict.fromkeys(spec.methods, spec))
        ops.update({_op_key(name): spec for name in spec.ops})
    fused_modules = tuple(
        cls for name in FUSED_RELU if "::" not in name and isinstance(cls := _resolve(name), type)
    )
    fused_ops = frozenset(_op_key(name) for name in FUSED_RELU if "::" in name)
    _INDEX = _Index(modules, functions, methods, ops, fused_modules, fused_ops)
    return _INDEX


def _from_torch(cls: type) -> bool:
    return cls.__module__ == "torch" or cls.__module__.startswith("torch.")


def module_spec(cls: type) -> OpSpec | None:
    """The spec of a module class: its own, or its nearest registered base's when no class in
    between overrides `forward` (torch's own subclasses, such as Conv2d of _ConvNd or the QAT and
    quantized layers, compute what their base does by construction). A subclass that overrides
    `forward` (a conv that pads itself, a norm that applies an activation) has no spec: it is
    traced into, so that what its forward adds is counted."""
    if cls not in _MODULE_SPECS:
        known = _index().modules
        found = None
        for klass in cls.__mro__:
            if klass in known:
                found = known[klass]
                break
            if "forward" in vars(klass) and not _from_torch(klass):
                break
        _MODULE_SPECS[cls] = found
    return _MODULE_SPECS[cls]


def function_spec(target: object) -> OpSpec | None:
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return _index().ops.get(op_name(target))
    try:
        return _index().functions.get(target)
    except TypeError:  # an unhashable target
        return None


def method_spec(name: str) -> OpSpec | None:
    return _index().methods.get(name)


def node_spec(node: torch.fx.Node, root: nn.Module) -> OpSpec | None:
    """What the node computes, or None when no spec covers it (it is then reported as
    uncounted). Placeholders, get_attr and output nodes are data: the free spec."""
    if node.op == "call_module":
        return module_spec(type(root.get_submodule(str(node.target))))
    if node.op == "call_function":
        return function_spec(node.target)
    if node.op == "call_method":
        return method_spec(str(node.target))
    return table.spec_of("free")


def target_name(node: torch.fx.Node, root: nn.Module) -> str:
    """A readable name of what the node calls: module class, function or method name."""
    if node.op == "call_module":
        return type(root.get_submodule(str(node.target))).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    target = node.target
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return "::".join(op_name(target)).replace("::", ".", 1)
    return getattr(target, "__name__", str(target))


def fused_relu(node: torch.fx.Node, root: nn.Module) -> bool:
    """Whether the node also applies a relu to its output (ConvReLU2d, quantized add_relu)."""
    index = _index()
    if node.op == "call_module":
        return isinstance(root.get_submodule(str(node.target)), index.fused_relu_modules)
    target = node.target
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return op_name(target) in index.fused_relu_ops
    return False


def op_name(target: torch._ops.OpOverload | torch._ops.OpOverloadPacket) -> tuple[str, str]:
    """(namespace, name) of a dispatcher op, e.g. ('aten', 'conv2d')."""
    packet = target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target
    namespace, _, name = packet._qualified_op_name.partition("::")
    return namespace, name


def reads_stored_qparams_only(node: torch.fx.Node) -> bool:
    """A dequantize op repeats the scale and zero point of the quantize that fed it: literal
    parameters are charged once, at the quantize."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return op_name(target)[1].startswith("dequantize")
    return False


@functools.cache
def formula_of(kind: str, variant: str) -> Callable[..., object]:
    return table.formula(kind, variant)


table.on_change(formula_of.cache_clear)
