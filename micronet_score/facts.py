"""Per-node facts gathered once: kind, module path, shapes, and the stored tensors a node reads.

Formulas only see these facts, so the same formula serves `nn.Conv2d`, `F.conv2d` and
`aten.conv2d` alike.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache

import torch
import torch.fx
from torch import nn

from micronet_score.bits import dtype_bits
from micronet_score.graph import TensorInfo, TracedModel
from micronet_score.opkinds import OpKind
from micronet_score.ops.index import (
    fused_relu,
    module_spec,
    node_spec,
    reads_stored_qparams_only,
    target_name,
)
from micronet_score.ops.spec import OpSpec, Trait, spec_of
from micronet_score.shadow import parametrized_value

_STORED_ROLES = ("weight", "bias", "running_mean", "running_var")
# Quantization parameters read by quantize/dequantize ops (names from torch and PT2E schemas).
QPARAM_ROLES = (
    "scale", "zero_point", "scales", "zero_points", "weight_scale", "weight_zero_point"
)


# Stored tensors that belong to the layer reading them (never activation inputs).
LAYER_ROLES = (*_STORED_ROLES, *QPARAM_ROLES)


@dataclass(frozen=True, eq=False)
class Operand:
    """A stored tensor read by a node. `identity` dedupes tensors shared by several nodes."""

    key: str
    identity: int
    tensor: torch.Tensor
    bits: int | None = None  # width a quantizer bounds the values to, when one does
    transposed: bool = False  # read through a transpose of its last two dimensions


@dataclass(frozen=True, eq=False)
class NodeFacts:
    """`kind` is the op table's kind (None: no spec covers the node); `inputs` are the activation
    inputs (stored operands excluded), `input_nodes` their nodes; `operands` the stored tensors the
    node reads (a module's by role or parameter name, a call's by argument name); `args` a call's
    arguments bound by name; `attributes` the settings its spec names; `fused` is an activation a
    fused layer applies to its output; `quant_bits` is the width a quantize node bounds its
    values to."""

    node: torch.fx.Node
    kind: str | None
    module: str
    target: str
    inputs: tuple[TensorInfo, ...]
    output: TensorInfo | None
    operands: Mapping[str, Operand]
    attributes: Mapping[str, object]
    as_module: bool = False
    input_nodes: tuple[torch.fx.Node, ...] = ()
    fused: str | None = None
    quant_bits: int | None = None
    spec: OpSpec | None = None
    args: Mapping[str, object] = field(default_factory=dict)

    @property
    def free(self) -> bool:
        """Moves or relabels data only (the op table's FREE trait): no arithmetic, no row."""
        return self.spec is not None and Trait.FREE in self.spec.traits

    @property
    def weight(self) -> Operand | None:
        return self.operands.get("weight")

    @property
    def bias(self) -> Operand | None:
        return self.operands.get("bias")


def gather_facts(traced: TracedModel) -> list[NodeFacts]:
    """Facts for every computing node, in graph order (placeholders and outputs are skipped).

    Nodes after the output never run: the tracer leaves one there when a forward assigns a
    traced value to an attribute (`self.n += 1` on a buffer)."""
    facts = []
    for node in traced.graph.nodes:
        if node.op == "output":
            break
        if node.op in ("call_module", "call_function", "call_method"):
            facts.append(_facts(node, traced))
    return facts


def module_path(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = str(next(reversed(stack.values()))[0])
    return re.sub(r"@\d+$", "", path)


def _facts(node: torch.fx.Node, traced: TracedModel) -> NodeFacts:
    root = traced.root
    spec = node_spec(node, root)
    output = traced.values.get(node)
    if output is None and node in traced.values:
        spec = free_spec()  # integer and shape arithmetic, e.g. `x.size(0) * 2`, `x.dim() == 3`
    module = root.get_submodule(str(node.target)) if node.op == "call_module" else None
    args = _bind(node)
    if spec is not None and spec.kind == OpKind.CONV and args.get("transposed") is True:
        spec = spec_of(OpKind.CONV_TRANSPOSE)  # core-ATen `convolution` spells both
    kind = spec.kind if spec is not None else None
    operands = _module_operands(module, str(node.target), spec) if module is not None else {
        key: operand
        for name, value in args.items()
        for key, item in _items(name, value)
        if (operand := _stored(item, root)) is not None
    }
    if kind == OpKind.QUANTIZE and module is None and not reads_stored_qparams_only(node):
        operands = {**_literal_qparams(node, args), **operands}
    # Weights, biases and quantization parameters are operands only; any other stored tensor
    # (a position table added to x, a matrix multiplied with it) is also an input of the node.
    stored_nodes = {id(args[role]) for role in LAYER_ROLES if role in operands and role in args}
    argument_nodes: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), argument_nodes.append)
    activations = [  # in argument order, repeats kept: attention(x, x, x) has three inputs
        (arg, info)
        for arg in argument_nodes
        if id(arg) not in stored_nodes and (info := traced.values.get(arg)) is not None
    ]
    source = vars(module) if module is not None else args
    names = spec.attributes if spec is not None else ()
    attributes = {name: source[name] for name in names if name in source}
    return NodeFacts(
        node=node,
        kind=kind,
        module=module_path(node),
        target=target_name(node, root),
        inputs=tuple(info for _, info in activations),
        output=output,
        operands=operands,
        attributes=attributes,
        as_module=_written_as_module(node, kind),
        input_nodes=tuple(arg for arg, _ in activations),
        fused=OpKind.RELU if fused_relu(node, root) else None,
        quant_bits=quantizer_bits(module, args) if kind == OpKind.QUANTIZE else None,
        spec=spec,
        args=args,
    )


def free_spec() -> OpSpec:
    return spec_of(OpKind.FREE)


def _literal_qparams(node: torch.fx.Node, args: Mapping[str, object]) -> dict[str, Operand]:
    """Scale and zero point written into the graph as numbers (PT2E per-tensor quantization)."""
    return {
        role: Operand(f"{node.name}.{role}", hash((id(node), role)), torch.tensor([value]))
        for role in ("scale", "zero_point")
        if isinstance(value := args.get(role), int | float)
    }


def _levels_bits(quant_min: object, quant_max: object) -> int:
    levels = int(str(quant_max)) - int(str(quant_min)) + 1
    return max(1, math.ceil(math.log2(levels)))


def quantizer_bits(module: nn.Module | None, args: Mapping[str, object]) -> int | None:
    """Width of the values a quantizer produces: from its integer range when it has one
    (a 4-bit fake-quant with range -8..7 gives 4), else from its quantized dtype."""
    source: Mapping[str, object] = vars(module) if module is not None else args
    if source.get("quant_min") is not None and source.get("quant_max") is not None:
        return _levels_bits(source["quant_min"], source["quant_max"])
    dtype = source.get("dtype", getattr(module, "dtype", None))
    return dtype_bits(dtype) if isinstance(dtype, torch.dtype) else None


def _written_as_module(node: torch.fx.Node, kind: str | None) -> bool:
    """Whether the node is the computation of a torch.nn layer (not a function call).

    Rule sets that mimic module-hook counters only see these. In exported graphs the layer is
    recognised from the innermost entry of the node's module stack.
    """
    if node.op == "call_module":
        return True
    stack = node.meta.get("nn_module_stack")
    if not stack or kind is None:
        return False
    owner = next(reversed(stack.values()))[1]
    cls = _torch_class(owner) if isinstance(owner, str) else owner
    if not isinstance(cls, type):
        return False
    spec = module_spec(cls)
    return spec is not None and spec.kind == kind


@cache
def _torch_class(qualified_name: str) -> type | None:
    """Resolve a recorded class name among torch modules already imported: the name may come
    from a file (an exported program's metadata), and must never make us import anything."""
    module_name, _, name = qualified_name.rpartition(".")
    module = sys.modules.get(module_name) if module_name.startswith("torch.") else None
    value = getattr(module, name, None) if module is not None else None
    return value if isinstance(value, type) else None


def _attribute(module: nn.Module, name: str) -> object:
    """`getattr(module, name, None)` without nn.Module's slow path for missing names, which
    raises and catches an exception each time (this runs several times per layer)."""
    for store in (module._parameters, module._buffers, module._modules, module.__dict__):
        if name in store:
            return store[name]
    return getattr(module, name) if hasattr(type(module), name) else None


def effective_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """The value a layer really uses: pruning masks applied, parametrizations evaluated (as at
    inference, without their hooks: see `parametrized_value`)."""
    original = _attribute(module, f"{name}_orig")
    mask = _attribute(module, f"{name}_mask")
    if isinstance(original, torch.Tensor) and isinstance(mask, torch.Tensor):
        return original.detach() * mask.detach()
    parametrization = _parametrization(module, name)
    if parametrization is not None:
        return parametrized_value(parametrization).detach()
    value = _attribute(module, name)
    return value.detach() if isinstance(value, torch.Tensor) else None


def _parametrization(module: nn.Module, name: str) -> nn.Module | None:
    """The `torch.nn.utils.parametrize` list computing ``module.<name>``, if there is one."""
    parametrizations = module._modules.get("parametrizations")
    return None if parametrizations is None else parametrizations._modules.get(name)


def _identity(module: nn.Module, name: str) -> int:
    """A stable identity for a module's stored value, whichever way it is computed."""
    value = _attribute(module, f"{name}_orig")
    parametrization = _parametrization(module, name)
    if value is None and parametrization is not None:
        value = _attribute(parametrization, "original")
        if value is None:  # a parametrization of several tensors
            value = _attribute(parametrization, "original0")
    if value is None:
        value = _attribute(module, name)
    if isinstance(value, torch.Tensor):
        return id(value)
    return hash((id(module), name))  # packed quantized weights: one value per module


def _stored_value(module: nn.Module, role: str) -> torch.Tensor | None:
    """Stored values of a layer: quantized layers unpack theirs (`weight()`); a QAT conv-bn
    layer's bias is its BatchNorm's shift, which converting folds into it."""
    if _parametrization(module, role) is not None:  # read once, below
        return effective_tensor(module, role)
    value = _attribute(module, role)
    if callable(value) and not isinstance(value, nn.Module):
        packed = value()
        return packed.detach() if isinstance(packed, torch.Tensor) else None
    if role == "bias" and value is None:
        batch_norm = _attribute(module, "bn")
        if isinstance(batch_norm, nn.modules.batchnorm._BatchNorm):
            return effective_tensor(batch_norm, "bias")
    if role in ("scale", "zero_point") and isinstance(value, int | float):
        return torch.tensor([value])
    return effective_tensor(module, role)


def _module_operands(module: nn.Module, path: str, spec: OpSpec | None) -> dict[str, Operand]:
    if spec is not None and Trait.COMPOSITE in spec.traits:
        return {
            # the parameter itself: a nested one (out_proj.weight) is no attribute of the module
            name: Operand(f"{path}.{name}", id(value), value.detach())
            for name, value in module.named_parameters()
        }
    weight_quantizer = _attribute(module, "weight_fake_quant")
    weight_bits = None
    if isinstance(weight_quantizer, nn.Module):
        weight_bits = quantizer_bits(weight_quantizer, {})
    operands: dict[str, Operand] = {}
    for role in (*_STORED_ROLES, "scale", "zero_point"):
        value = _stored_value(module, role)
        if value is not None:
            key = f"{path}.{role}" if path else role
            bits = weight_bits if role == "weight" else None
            operands[role] = Operand(key, _identity(module, role), value, bits)
    if isinstance(weight_quantizer, nn.Module):  # the scales and zero points converting stores
        for role in ("scale", "zero_point"):
            value = getattr(weight_quantizer, role)
            operands[f"weight_{role}"] = Operand(
                f"{path}.weight_fake_quant.{role}", id(value), value.detach(), weight_bits
            )
    return operands


def _stored(value: object, root: nn.Module) -> Operand | None:
    """Follow a value back through free reshapes (`t(weight)`) and dequantize ops to a stored
    tensor, if any; a quantizer met on the way bounds the width of its values."""
    bits = None
    transposed = False
    while isinstance(value, torch.fx.Node):
        if value.op == "get_attr":
            tensor = _attr(root, str(value.target))
            if tensor is None:
                return None
            return Operand(str(value.target), id(tensor), tensor.detach(), bits, transposed)
        spec = node_spec(value, root) if value.op in ("call_function", "call_method") else None
        passes = spec is not None and (Trait.FREE in spec.traits or Trait.QUANTIZER in spec.traits)
        if passes and value.args:
            if spec is not None and Trait.QUANTIZER in spec.traits and bits is None:
                bits = quantizer_bits(None, _bind(value))
            transposed ^= _swaps_last_dims(value)
            value = value.args[0]
            continue
        return None
    return None


def _items(name: str, value: object) -> list[tuple[str, object]]:
    """An argument, or the items of a list argument by `name.i` (aten::lstm's `params`)."""
    if isinstance(value, list | tuple):
        return [(f"{name}.{i}", item) for i, item in enumerate(value)]
    return [(name, value)]


def _swaps_last_dims(node: torch.fx.Node) -> bool:
    """`t(w)`, `transpose(w, 0, 1)`, `permute(w, [1, 0])`: how a linear weight is read as a
    matrix's second operand (core-ATen `addmm(bias, x, permute(w))`)."""
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    if name in ("t", "numpy_T"):
        return True
    if name == "getattr":  # `w.T`, `w.mT` in a symbolic trace
        return len(node.args) == 2 and node.args[1] in ("T", "mT")
    if name == "transpose":
        return len(node.args) == 3 and {node.args[1], node.args[2]} in ({0, 1}, {-1, -2})
    if name == "permute" and len(node.args) == 2 and isinstance(node.args[1], list | tuple):
        return tuple(node.args[1]) in ((1, 0), (-1, -2))
    return False


def _attr(root: nn.Module, target: str) -> torch.Tensor | None:
    owner_path, _, name = target.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    value = getattr(owner, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _bind(node: torch.fx.Node) -> dict[str, object]:
    """Arguments by name, so formulas never depend on positions (they differ across dialects)."""
    if node.op != "call_function":
        return dict(node.kwargs)
    names = _argument_names(node.target)
    bound: dict[str, object] = dict(zip(names, node.args, strict=False))
    bound.update(node.kwargs)
    return bound


@cache
def _argument_names(target: Callable[..., object]) -> tuple[str, ...]:
    schema = getattr(target, "_schema", None)
    if isinstance(target, torch._ops.OpOverloadPacket):
        overloads: list[str] = target.overloads()  # type: ignore[no-untyped-call]
        schema = getattr(target, overloads[0])._schema if overloads else None
    if schema is None:
        try:
            parameters = inspect.signature(target).parameters.values()
            if all(p.kind is not p.VAR_POSITIONAL for p in parameters):
                return tuple(p.name for p in parameters)
        except (TypeError, ValueError):
            pass
        # A C builtin (F.conv2d) or a dispatcher (F.max_pool2d): use the aten op of that name.
        packet = getattr(torch.ops.aten, getattr(target, "__name__", ""), None)
        schema = getattr(getattr(packet, "default", None), "_schema", None)
        if schema is None:
            return ()
    return tuple(argument.name for argument in schema.arguments)
