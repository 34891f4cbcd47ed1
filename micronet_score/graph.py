"""Turn a model into a torch.fx graph with the shape and dtype of every value, without real compute.

Symbolic tracing is tried first because it keeps `nn.Module` leaves (a conv stays one node that owns
its weights). Models with data-dependent control flow fall back to `torch.export`. Shapes come from
running the graph on fake tensors, so no activation memory is allocated and no arithmetic is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from micronet_score.classify import function_kind, module_kind
from micronet_score.errors import UserError
from micronet_score.opkinds import SHAPE_PRESERVING


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

    `root` is the user's own module for symbolic traces (never modified), or the GraphModule that
    `torch.export` produced. `values` maps each node to its (first) tensor output, or None.
    """

    graph: torch.fx.Graph
    root: nn.Module
    values: dict[torch.fx.Node, TensorInfo | None]
    input_shape: tuple[int, ...]
    method: str


class _LeafTracer(torch.fx.Tracer):
    """Keeps layers we have formulas for whole, and torch's own modules that have no children.

    A torch.nn module with children (e.g. TransformerEncoderLayer) is traced through, so that the
    layers inside it are counted one by one instead of the whole block going uncounted.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_kind(type(m)) is not None:  # includes parametrized and pruned layers
            return True
        if isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            return False
        module_name = type(m).__module__
        if module_name.startswith("torch.ao.nn"):
            return True
        from_torch = module_name.startswith("torch.nn")
        return from_torch and next(m.children(), None) is None


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> TracedModel:
    """Trace `model` at batch size 1 and propagate shapes on fake tensors."""
    if isinstance(model, torch.fx.GraphModule):
        return _from_graph_module(model, input_shape)
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception as symbolic_error:
        stack = list(getattr(tracer, "module_stack", {}).values())
        where = str(stack[-1][0]) if stack and stack[-1][0] else "the top-level module"
        return _export_fallback(model, input_shape, symbolic_error, where)
    return TracedModel(
        graph=graph,
        root=model,
        values=_propagate(model, graph, input_shape),
        input_shape=input_shape,
        method="symbolic_trace",
    )


def _from_graph_module(gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> TracedModel:
    """Use an existing graph (FX-quantized model, unlifted export); reuse recorded shapes if any."""
    recorded = _recorded_values(gm.graph)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first = recorded.get(placeholders[0]) if placeholders else None
    if first is not None and first.shape == (1, *input_shape) and all(
        n in recorded for n in gm.graph.nodes if n.op not in ("output", "call_module")
    ):
        return TracedModel(gm.graph, gm, recorded, input_shape, "graph_module")
    return TracedModel(
        gm.graph, gm, _propagate(gm, gm.graph, input_shape), input_shape, "graph_module"
    )


def _export_fallback(
    model: nn.Module, input_shape: tuple[int, ...], symbolic_error: Exception, where: str
) -> TracedModel:
    example = torch.zeros((1, *input_shape), dtype=_input_dtype(model))
    try:
        program = torch.export.export(model, (example,), strict=False)
    except Exception as export_error:
        raise UserError(
            f"cannot trace the model: symbolic tracing failed in {where} "
            f"({_first_line(symbolic_error)}) "
            f"and torch.export failed ({_first_line(export_error)}); "
            "make the forward free of data-dependent control flow, or export it yourself "
            "with torch.export and score the .pt2 file"
        ) from export_error
    gm = program.module()
    return TracedModel(gm.graph, gm, _recorded_values(gm.graph), input_shape, "torch.export")


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _input_dtype(model: nn.Module) -> torch.dtype:
    """Feed a half-precision model half-precision inputs, as its owner would."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


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
    """Runs the graph on fake tensors and keeps only each node's output shape and dtype."""

    def __init__(self, root: nn.Module, graph: torch.fx.Graph) -> None:
        super().__init__(root, graph=graph)
        self.extra_traceback = False  # our error already names the node; keep it one line
        self.values: dict[torch.fx.Node, TensorInfo | None] = {}

    def run_node(self, n: torch.fx.Node) -> object:
        try:
            result = self._passthrough(n) if self._preserves_shape(n) else super().run_node(n)
        except Exception as error:
            where = n.meta.get("nn_module_stack")
            module = next(reversed(where.values()))[0] if where else n.target
            raise UserError(
                f"the model does not run on the given input shape: node '{n.name}' "
                f"(module '{module}') failed with {_first_line(error)}; check --input-shape"
            ) from error
        self.values[n] = _info(result)
        return result

    def _preserves_shape(self, n: torch.fx.Node) -> bool:
        """Norms and activations only need their input's shape: skip running them (BatchNorm on
        fake tensors costs milliseconds, as it is decomposed into many small ops)."""
        if n.op == "call_module":
            kind = module_kind(type(self.module.get_submodule(str(n.target))))
        elif n.op == "call_function" and not isinstance(n.target, torch._ops.OpOverload):
            kind = function_kind(n.target)
        else:
            return False
        return kind in SHAPE_PRESERVING and isinstance(n.args[0], torch.fx.Node)

    def _passthrough(self, n: torch.fx.Node) -> object:
        return self.env[n.args[0]]  # type: ignore[index]


def _propagate(
    root: nn.Module, graph: torch.fx.Graph, input_shape: tuple[int, ...]
) -> dict[torch.fx.Node, TensorInfo | None]:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    recorder = _ShapeRecorder(root, graph)
    with mode, torch.no_grad():
        example = torch.empty((1, *input_shape), dtype=_input_dtype(root))
        n_inputs = sum(1 for n in graph.nodes if n.op == "placeholder")
        recorder.run(example, *([None] * (n_inputs - 1)))
    return recorder.values
