"""Turn a model into a torch.fx graph with the shape and dtype of every value, without real compute.

Symbolic tracing is tried first because it keeps `nn.Module` leaves (a conv stays one node that owns
its weights). Models with data-dependent control flow fall back to `torch.export`. Shapes come from
running the graph on fake tensors, so no activation memory is allocated and no arithmetic is done.
Both trace a hook-free shadow of the model (see `micronet_score.shadow`), never the model itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import torch
import torch.fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._pytree import tree_leaves, tree_map

from micronet_score.errors import UserError
from micronet_score.opkinds import OpKind
from micronet_score.ops.index import function_spec, module_spec, resolve_op_table
from micronet_score.ops.spec import Trait
from micronet_score.shadow import (
    OutsiderRefusal,
    ShadowTracer,
    global_hook,
    module_hook,
    outsiders_refused,
    shadow,
    shared_objects_watched,
)


@dataclass(frozen=True)
class TensorInfo:
    """What the counter needs to know about one value flowing through the graph."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True, eq=False)
class TracedModel:
    """A graph whose `get_attr` and `call_module` targets resolve against `root`.

    `root` is a shadow of the user's module (same classes and tensors, see `shadow`) for symbolic
    traces and graph modules, or the GraphModule that `torch.export` produced. `values` maps each
    node to its (first) tensor output, or None. `skipped_hook` describes a forward hook of the
    model that tracing did not run, if there is one; `notes` are warnings for the report.
    """

    graph: torch.fx.Graph
    root: nn.Module
    values: dict[torch.fx.Node, TensorInfo | None]
    input_shape: tuple[int, ...]
    method: str
    skipped_hook: str | None = None
    notes: tuple[str, ...] = ()


class _LeafTracer(ShadowTracer):
    """Keeps layers the op table has a spec for whole, and torch's own modules without children.

    A torch.nn module with children (e.g. TransformerEncoderLayer) is traced through, so that the
    layers inside it are counted one by one instead of the whole block going uncounted; so is a
    subclass of a known layer that overrides `forward` (see `module_spec`).
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_spec(type(m)) is not None:  # includes parametrized and pruned layers
            return True
        if isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            return False
        module_name = type(m).__module__
        if module_name.startswith("torch.ao.nn"):
            return True
        from_torch = module_name.startswith("torch.nn")
        return from_torch and next(m.children(), None) is None


def trace(
    model: nn.Module, input_shape: tuple[int, ...], input_dtype: torch.dtype | None = None
) -> TracedModel:
    """Trace `model` at batch size 1 and propagate shapes on fake tensors.

    The input is a tensor of `input_dtype` (default: the model's float type; token ids need
    torch.long) with a batch dimension of 1 in front of `input_shape`. Hooks are not run, and
    `model` is only read (its parameters' values included). Raises UserError when the model
    cannot be traced or run on that input; the message names a hook scoring skipped, if any.
    Also raises it, before anything runs, for a module the model keeps outside its module tree
    where the shadow cannot follow (see `micronet_score.shadow`).
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError(
            "a TorchScript module hides its layers; score the nn.Module it was scripted from, "
            "or a torch.export program"
        )
    root = shadow(model)  # may refuse: a module outside the tree, which tracing would run
    changed = shared_objects_watched(model)
    try:
        traced = _trace(root, input_shape, input_dtype)
    except (_HookRefusal, OutsiderRefusal):
        raise
    except UserError as error:
        hook = module_hook(model)  # the hook may be what the forward needed
        if hook is None:
            raise
        raise UserError(f"{error}; note that scoring does not run hooks, and {hook}") from error
    change = changed()
    notes = () if change is None else (change,)
    return dataclasses.replace(traced, skipped_hook=module_hook(model), notes=notes)


class _HookRefusal(UserError):
    """The model could only be traced by running a hook."""


def _trace(
    model: nn.Module, input_shape: tuple[int, ...], input_dtype: torch.dtype | None
) -> TracedModel:
    resolve_op_table()  # before tracing: `torch.fx.wrap` patches functions while it traces
    tracer = _LeafTracer()
    if isinstance(model, torch.fx.GraphModule) and not _has_containers(model, tracer):
        return _from_graph_module(model, input_shape, input_dtype)
    try:
        graph = tracer.trace(model)
    except Exception as symbolic_error:
        stack = list(getattr(tracer, "module_stack", {}).values())
        where = str(stack[-1][0]) if stack and stack[-1][0] else "the top-level module"
        return _export_fallback(model, input_shape, input_dtype, symbolic_error, where)
    return TracedModel(
        graph=graph,
        root=model,
        values=_propagate(model, graph, input_shape, input_dtype),
        input_shape=input_shape,
        method="symbolic_trace",
    )


def _has_containers(gm: torch.fx.GraphModule, tracer: _LeafTracer) -> bool:
    """A graph that calls modules we would trace through (e.g. fused ConvReLU2d containers
    from `fuse_fx`) is traced again, so that their layers are counted one by one."""
    return any(
        node.op == "call_module"
        and not tracer.is_leaf_module(gm.get_submodule(str(node.target)), str(node.target))
        for node in gm.graph.nodes
    )


def _from_graph_module(
    gm: torch.fx.GraphModule, input_shape: tuple[int, ...], input_dtype: torch.dtype | None
) -> TracedModel:
    """Use an existing graph (FX-quantized model, unlifted export); reuse recorded shapes if any."""
    recorded = _recorded_values(gm.graph)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first = recorded.get(placeholders[0]) if placeholders else None
    if first is not None and first.shape == (1, *input_shape) and all(
        n in recorded for n in gm.graph.nodes if n.op not in ("output", "call_module")
    ):
        return TracedModel(gm.graph, gm, recorded, input_shape, "the exported program's graph")
    return TracedModel(
        gm.graph, gm, _propagate(gm, gm.graph, input_shape, input_dtype), input_shape,
        "graph module",
    )


def _export_fallback(
    model: nn.Module,
    input_shape: tuple[int, ...],
    input_dtype: torch.dtype | None,
    symbolic_error: Exception,
    where: str,
) -> TracedModel:
    """`model` is a shadow: torch.export swaps its tensors and calls its submodules with their
    (empty) hooks. It would also call hooks registered for all modules, so those refuse."""
    failed = f"symbolic tracing failed in {where} ({_first_line(symbolic_error)})"
    hook = global_hook()
    if hook is not None:
        raise _HookRefusal(
            f"cannot trace the model without running {hook}: {failed}, and torch.export runs "
            "such hooks; remove it while scoring, or make the forward free of data-dependent "
            "control flow"
        ) from symbolic_error
    example = _example(model, (1, *input_shape), input_dtype)
    try:
        with outsiders_refused(f"{failed}, and torch.export"):
            program = torch.export.export(model, (example,), strict=False)
    except OutsiderRefusal:
        raise
    except Exception as export_error:
        raise UserError(
            f"cannot trace the model: {failed} "
            f"and torch.export failed ({_first_line(export_error)}); "
            "make the forward free of data-dependent control flow, or export it yourself "
            "with torch.export and score the .pt2 file"
        ) from export_error
    gm = inline_subgraphs(program).module()
    return TracedModel(gm.graph, gm, _recorded_values(gm.graph), input_shape, "torch.export")


_SUBGRAPH_WRAPPERS = ("wrap_with_autocast", "wrap_with_set_grad_enabled")


def inline_subgraphs(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """A region under autocast or no_grad is one higher-order op around a subgraph in an exported
    program; `run_decompositions` with no decompositions inlines it (casts made explicit),
    computing the same. Other programs are returned as they are."""
    wraps = any(
        node.op == "call_function"
        and getattr(node.target, "__name__", "") in _SUBGRAPH_WRAPPERS
        for node in program.graph.nodes
    )
    return program.run_decompositions({}) if wraps else program


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _input_dtype(model: nn.Module) -> torch.dtype:
    """Feed a half-precision model half-precision inputs, as its owner would."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _input_device(model: nn.Module) -> torch.device:
    """A model built on the meta device gets a meta input: its weights were never allocated."""
    for tensor in model.parameters():
        return torch.device("meta") if tensor.device.type == "meta" else torch.device("cpu")
    return torch.device("cpu")


def _example(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype | None) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype or _input_dtype(model), device=_input_device(model))


def _info(value: object) -> TensorInfo | None:
    for leaf in _tensors(value):
        return TensorInfo(tuple(int(d) for d in leaf.shape), leaf.dtype)
    return None


def _tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def _recorded_values(graph: torch.fx.Graph) -> dict[torch.fx.Node, TensorInfo | None]:
    return {n: _info(n.meta["val"]) for n in graph.nodes if "val" in n.meta}


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs the graph on fake tensors and keeps only each node's output shape and dtype.

    Shape-preserving layers pass their input through, and conv and linear layers get their
    output shape from arithmetic. Other layers run their `forward` (never `__call__`: no hooks)
    on a shadow holding fake copies of their tensors, and stored tensors read by the graph are
    fake too: under a fake mode, an in-place update of a real tensor by constants is really done.
    Ops without a fake implementation (the quantized engine's) run once for real on zeros at
    batch size 1, on the real tensors of a shadow; those layers keep no state.
    """

    def __init__(self, root: nn.Module, graph: torch.fx.Graph, mode: FakeTensorMode) -> None:
        super().__init__(root, graph=graph)
        self.extra_traceback = False  # our error already names the node; keep it one line
        self.mode = mode
        self.values: dict[torch.fx.Node, TensorInfo | None] = {}
        self._real: dict[torch.Tensor, torch.Tensor] = {}  # fake stand-in -> stored tensor
        self._fake_layers: dict[str, nn.Module] = {}

    def run_node(self, n: torch.fx.Node) -> object:
        try:
            result = self._shape_of(n)
        except Exception as error:
            where = n.meta.get("nn_module_stack")
            module = next(reversed(where.values()))[0] if where else n.target
            raise UserError(
                f"the model does not run on the given input shape: node '{n.name}' "
                f"(module '{module}') failed with {_first_line(error)}; "
                "check --input-shape (and --input-dtype)"
            ) from error
        self.values[n] = _info(result)
        return result

    def _shape_of(self, n: torch.fx.Node) -> object:
        kind, passthrough = self._kind(n)
        module = self.module.get_submodule(str(n.target)) if n.op == "call_module" else None
        passthrough = passthrough or isinstance(module, _observers())
        if passthrough and isinstance(n.args[0], torch.fx.Node):
            return self.env[n.args[0]]
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if _needs_real_run(n, module, (args, kwargs)):
            return self._run_for_real(n, args, kwargs)
        if module is not None and kind in _STAND_IN_KINDS:
            return self._empty(_stand_in_shape(module, args[0]), args[0])
        return super().run_node(n)

    def _empty(self, shape: tuple[int, ...], like: object) -> torch.Tensor:
        """A fake tensor built directly around a meta tensor: ten times cheaper than
        dispatching `torch.empty` through the fake mode."""
        assert isinstance(like, torch.Tensor)
        with unset_fake_temporarily():
            meta = torch.empty(shape, dtype=like.dtype, device="meta")
        return FakeTensor(self.mode, meta, like.device)

    def _kind(self, n: torch.fx.Node) -> tuple[str | None, bool]:
        """The node's kind and whether its output has its first input's shape and dtype."""
        spec = None
        if n.op == "call_module":
            spec = module_spec(type(self.module.get_submodule(str(n.target))))
        elif n.op == "call_function" and not isinstance(n.target, torch._ops.OpOverload):
            spec = function_spec(n.target)
        if spec is None:
            return None, False
        return spec.kind, Trait.SHAPE_PRESERVING in spec.traits

    def call_module(
        self, target: torch.fx.node.Target, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> object:
        layer = self._fake_layers.get(str(target))
        if layer is None:
            layer = shadow(self.fetch_attr(str(target)), convert=self._fake)
            self._fake_layers[str(target)] = layer
        return layer.forward(*args, **kwargs)

    def get_attr(
        self, target: torch.fx.node.Target, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> object:
        value = super().get_attr(target, args, kwargs)  # type: ignore[arg-type]
        return self._fake(value) if isinstance(value, torch.Tensor) else value

    def _fake(self, tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(tensor, FakeTensor) or tensor.dtype in _QUANTIZED_DTYPES:
            return tensor
        fake = self.mode.from_tensor(tensor)
        self._real[fake] = tensor
        return fake

    def _run_for_real(self, n: torch.fx.Node, args: object, kwargs: object) -> object:
        """Quantized tensors cannot be faked: such ops run on zeros (stored tensors keep their
        values), and their quantized outputs stay real (batch size 1) while float outputs go
        back to fake tensors."""
        with unset_fake_temporarily(), torch.no_grad():
            real_args, real_kwargs = tree_map(self._zeros_like, (args, kwargs))
            if n.op == "call_module":
                result = self.fetch_attr(str(n.target)).forward(*real_args, **real_kwargs)
            else:
                result = getattr(self, n.op)(n.target, real_args, real_kwargs)
        return tree_map(
            lambda v: self.mode.from_tensor(v) if _is_float_tensor(v) else v, result
        )

    def _zeros_like(self, value: object) -> object:
        stored = self._real.get(value) if isinstance(value, FakeTensor) else None
        return stored if stored is not None else _zeros_like(value)


_STAND_IN_KINDS = frozenset({OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.LINEAR})
_QUANTIZED_DTYPES = (torch.quint8, torch.qint8, torch.qint32)
_QUANTIZING_FUNCTIONS = (torch.quantize_per_tensor, torch.quantize_per_channel)


@cache
def _observers() -> tuple[type, ...]:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase
    from torch.ao.quantization.observer import ObserverBase

    return (FakeQuantizeBase, ObserverBase)


def _is_float_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype not in _QUANTIZED_DTYPES


def _needs_real_run(n: torch.fx.Node, module: nn.Module | None, inputs: object) -> bool:
    """Ops that read or make quantized tensors, and quantized layers (packed weights)."""
    if n.target in _QUANTIZING_FUNCTIONS:
        return True
    if module is not None and (  # `weight()` unpacks; the class is asked, or a parametrized
        callable(getattr(type(module), "weight", None))  # weight would be computed here
        or type(module).__module__.startswith("torch.ao.nn.quantized")
    ):
        return True
    return any(
        isinstance(v, torch.Tensor) and v.dtype in _QUANTIZED_DTYPES for v in tree_leaves(inputs)
    )


def _stand_in_shape(module: nn.Module, x: object) -> tuple[int, ...]:
    """The layer's output shape from its arithmetic (dispatching a fake convolution costs far
    more than this)."""
    assert isinstance(x, torch.Tensor)
    if isinstance(module, nn.Linear):
        if x.shape[-1] != module.in_features:
            raise ValueError(f"expected {module.in_features} input features, got {x.shape[-1]}")
        shape = (*x.shape[:-1], module.out_features)
    else:
        assert isinstance(module, nn.modules.conv._ConvNd)
        if x.dim() != len(module.kernel_size) + 2 or x.shape[1] != module.in_channels:
            raise ValueError(
                f"expected input of {module.in_channels} channels and "
                f"{len(module.kernel_size)} spatial dimensions, got shape {tuple(x.shape)}"
            )
        spatial = [
            _conv_size(module, int(size), dim) for dim, size in enumerate(x.shape[2:])
        ]
        shape = (x.shape[0], module.out_channels, *spatial)
    return tuple(int(d) for d in shape)


def _conv_size(module: nn.modules.conv._ConvNd, size: int, dim: int) -> int:
    kernel, stride, dilation = module.kernel_size[dim], module.stride[dim], module.dilation[dim]
    reach = dilation * (kernel - 1)
    if module.padding == "same":
        return size
    padding = 0 if isinstance(module.padding, str) else int(module.padding[dim])  # "valid": 0
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return (size - 1) * stride - 2 * padding + reach + module.output_padding[dim] + 1
    return (size + 2 * padding - reach - 1) // stride + 1


def _zeros_like(value: object) -> object:
    if not isinstance(value, FakeTensor):
        return value
    shape = tuple(int(d) for d in value.shape)
    if value.dtype in _QUANTIZED_DTYPES:
        return torch.quantize_per_tensor(torch.zeros(shape), 1.0, 0, value.dtype)
    return torch.zeros(shape, dtype=value.dtype)


def _propagate(
    root: nn.Module,
    graph: torch.fx.Graph,
    input_shape: tuple[int, ...],
    input_dtype: torch.dtype | None,
) -> dict[torch.fx.Node, TensorInfo | None]:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    recorder = _ShapeRecorder(root, graph, mode)
    with mode, torch.no_grad():
        example = _example(root, (1, *input_shape), input_dtype)
        # Later inputs take the forward's defaults (a placeholder keeps its default in args).
        rest = [n.args[0] if n.args else None
                for n in graph.nodes if n.op == "placeholder"][1:]
        recorder.run(example, *rest)
    return recorder.values
