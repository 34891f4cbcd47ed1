"""An independent reference for the official MicroNet counter's rules, for tests only.

The official counter is `micronet_challenge/counting.py` in google-research/google-research,
used by its EfficientNet notebook. It counts a hand-written list of ops; this module builds such a
list from a PyTorch model and counts it under the same rules. It shares no code with
`micronet_score` and imports nothing from it.

The official rules, in our words (every count is per example):

- Convolution: each output element is one dot product of length k_h*k_w*C_in (k_h*k_w for a
  depthwise conv): that many multiplications and one addition fewer. Its weights are stored at the
  parameter width.
- Dense layer: the same, with one output position and length C_in.
- Bias: C_out values, always stored dense at the parameter width, and one more addition per
  output element.
- BatchNorm right after a conv or dense layer is folded: its scale is merged into the weights and
  not counted, its shift becomes that layer's bias (the notebook marks every conv followed by a
  BatchNorm as having a bias).
- Global average: one multiplication (the division) per channel and H*W - 1 additions per channel.
- Element-wise product (the squeeze-excitation scaling): one multiplication per element.
  Element-wise sum (a skip connection): one addition per element.
- Activation, per output element: relu 1 multiplication (a comparison, booked as a multiplication
  so that it may run at reduced precision); swish 3 multiplications and 1 addition; sigmoid 2
  multiplications and 1 addition. Any other activation is an error there.
- Sparsity is one fraction s for the whole model and touches only conv and dense weights: the dot
  products shrink to (1 - s) of their length and the stored weights to (1 - s) of their bits, plus
  a 1-bit mask per weight when s > 0. Biases and activations stay dense.
- Widths: one parameter width for every stored value, one multiplication width (`mul_bits`, the
  width of a multiplication's inputs) for every multiplication, and one addition width
  (`add_bits`, the accumulator) for every addition, accumulations and element-wise sums alike.
  A b-bit value or op counts b/32. The notebook's published use of the 16-bit freebie stores
  parameters and multiplies at 16 bits and adds at 32. A model with mixed widths is out of scope.

Extensions for what counting.py cannot describe: relu6 (hardtanh 0..6) as two comparisons and a
BatchNorm that cannot fold (after a concatenation) as a per-channel scale and shift with both
values stored (both are `Conventions` fields); an average pool over a window of k inputs by the
global average's rule per output (1 multiplication, k - 1 additions); a grouped conv with dot
products of k_h*k_w*C_in/groups (depthwise is the case groups = C_in); and output sizes taken
from the real output tensors, where counting.py derives them from square 'same'/'valid' padding
(the two agree on the odd kernels with k//2 padding these models use).

How the op list is read: a deep copy of the model runs once, without gradients, under a
`TorchFunctionMode` that records every torch function call (conv2d, linear, batch_norm, relu,
add, mean, ...) with its tensors, while forward hooks on the copy track the module path. A
BatchNorm folds when its input was produced by a conv or dense layer whose output nothing else
reads and whose channels are the ones it normalises. An unknown function is an error: the
reference never drops work silently.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# counting.py's activation table (mults, adds per element), plus relu6: two comparisons, each a
# multiplication as counting.py books relu's one comparison (counting.py has no relu6).
OFFICIAL_ACTIVATIONS: Mapping[str, tuple[int, int]] = {
    "relu": (1, 0),
    "swish": (3, 1),
    "sigmoid": (2, 1),
    "relu6": (2, 0),
}

_ACTIVATION_NAMES = {
    "relu": "relu", "relu_": "relu", "silu": "swish", "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid", "relu6": "relu6",
}
_ADD_NAMES = {"add", "add_", "__add__", "__iadd__", "__radd__"}
_MUL_NAMES = {"mul", "mul_", "__mul__", "__imul__", "__rmul__"}
_POOL_NAMES = {"adaptive_avg_pool2d", "avg_pool2d", "mean"}
_CONV_NAMES = {"conv1d", "conv2d", "conv3d"}
# Calls that only read a tensor's shape: they are free and are not uses of its values.
_SHAPE_NAMES = {"dim", "size", "__get__"}
_FREE_NAMES = {"cat", "flatten", "view", "reshape", "dropout", "contiguous", *_SHAPE_NAMES}


@dataclass(frozen=True)
class Op:
    """One counted operation, per example. `kind` is conv, linear, batch_norm, activation,
    avg_pool, scale (element-wise product) or add (element-wise sum); `outputs` is the number of
    output elements; `channels` the output channels of a conv or linear (C_out) or the channels a
    BatchNorm normalises; `dot_length` the weights per output of a conv or linear
    (k_h*k_w*C_in/groups, or C_in); `weights` and `weight_zeros` count its weight tensor; `bias`
    whether it has a bias of its own; `folds_into` the index, in the same op list, of the conv or
    linear a BatchNorm can fold into (-1: none); `window` the inputs per output of an average;
    `activation` the activation's name. `module` is the module path it ran in."""

    kind: str
    module: str
    outputs: int
    channels: int = 0
    dot_length: int = 0
    weights: int = 0
    weight_zeros: int = 0
    bias: bool = False
    folds_into: int = -1
    window: int = 0
    activation: str = ""


@dataclass(frozen=True)
class Widths:
    """Bit widths, as counting.py's print_summary takes them: `params` for every stored value,
    `mults` for every multiplication, `adds` (add_bits) for every addition. `elementwise_adds`,
    when set, is the width of the additions outside conv/linear dot products and bias adds (the
    activation-width reading some counters use); None means counting.py's single `adds`."""

    params: int = 32
    mults: int = 32
    adds: int = 32
    elementwise_adds: int | None = None


@dataclass(frozen=True)
class Conventions:
    """Choices where counting.py has no op or where a counter may read the rules differently.
    `activations`: (mults, adds) per element by name. `bn_mults`, `bn_adds`: per element of a
    BatchNorm that cannot fold (a scale and a shift); `bn_params`: values it stores per channel
    (scale and shift; the running statistics merge into them). `fold_batch_norm`: whether a
    BatchNorm right after a conv or linear folds into it (the notebook's convention)."""

    activations: Mapping[str, tuple[int, int]] = field(
        default_factory=lambda: dict(OFFICIAL_ACTIVATIONS)
    )
    bn_mults: int = 1
    bn_adds: int = 1
    bn_params: int = 2
    fold_batch_norm: bool = True


@dataclass(frozen=True)
class Totals:
    """Counts of an op list. `params`: values stored; `param_bits`: their storage in bits (mask
    bits included); `mults`, `adds`: raw counts; `dot_mults`, `dot_adds`: those of conv and linear
    layers (accumulations and bias adds); `by_kind`: raw (mults, adds) per label (an op's kind,
    or its activation's name); `ops`: operations in 32-bit equivalents."""

    params: Fraction
    param_bits: Fraction
    mults: Fraction
    adds: Fraction
    dot_mults: Fraction
    dot_adds: Fraction
    by_kind: dict[str, tuple[Fraction, Fraction]]
    ops: Fraction

    @property
    def effective_params(self) -> Fraction:
        """Parameters in 32-bit equivalents (storage bits / 32)."""
        return self.param_bits / 32


def count(
    ops: Sequence[Op],
    widths: Widths | None = None,
    conventions: Conventions | None = None,
    sparsity: Fraction = Fraction(0),
) -> Totals:
    """Count `ops` under counting.py's rules. `sparsity` is counting.py's single fraction of zero
    conv/linear weights, declared, not measured. Raises ValueError for an activation with no
    entry in the conventions, or for a conv/linear whose weights hold zeros (counting.py cannot
    describe per-layer zeros, so such a model has no reference count here)."""
    widths = widths or Widths()
    conventions = conventions or Conventions()
    folded = {
        op.folds_into for op in ops
        if conventions.fold_batch_norm and op.kind == "batch_norm" and op.folds_into >= 0
    }
    kept = 1 - sparsity
    params = param_bits = mults = adds = dot_mults = dot_adds = Fraction(0)
    by_kind: dict[str, tuple[Fraction, Fraction]] = {}
    for index, op in enumerate(ops):
        op_mults = op_adds = Fraction(0)
        if op.kind in ("conv", "linear"):
            if op.weight_zeros:
                raise ValueError(f"{op.module}: {op.weight_zeros} zero weights; no reference")
            biases = op.channels if op.bias or index in folded else 0
            length = op.dot_length * kept
            op_mults = length * op.outputs
            op_adds = (length - 1) * op.outputs + (op.outputs if biases else 0)
            params += op.weights + biases
            param_bits += op.weights * widths.params * kept + biases * widths.params
            if sparsity > 0:
                param_bits += op.weights
            dot_mults += op_mults
            dot_adds += op_adds
        elif op.kind == "batch_norm":
            if op.folds_into in folded:  # folded: its shift is counted as the layer's bias
                continue
            op_mults = Fraction(conventions.bn_mults * op.outputs)
            op_adds = Fraction(conventions.bn_adds * op.outputs)
            params += conventions.bn_params * op.channels
            param_bits += conventions.bn_params * op.channels * widths.params
        elif op.kind == "activation":
            if op.activation not in conventions.activations:
                raise ValueError(f"{op.module}: no count for activation {op.activation!r}")
            per_mults, per_adds = conventions.activations[op.activation]
            op_mults, op_adds = Fraction(per_mults * op.outputs), Fraction(per_adds * op.outputs)
        elif op.kind == "avg_pool":
            op_mults, op_adds = Fraction(op.outputs), Fraction((op.window - 1) * op.outputs)
        elif op.kind == "scale":
            op_mults = Fraction(op.outputs)
        elif op.kind == "add":
            op_adds = Fraction(op.outputs)
        else:
            raise ValueError(f"{op.module}: unknown op kind {op.kind!r}")
        label = op.activation or op.kind
        before = by_kind.get(label, (Fraction(0), Fraction(0)))
        by_kind[label] = (before[0] + op_mults, before[1] + op_adds)
        mults += op_mults
        adds += op_adds
    other_bits = widths.elementwise_adds or widths.adds
    ops_32 = (mults * widths.mults + dot_adds * widths.adds + (adds - dot_adds) * other_bits) / 32
    return Totals(params, param_bits, mults, adds, dot_mults, dot_adds, by_kind, ops_32)


@dataclass(frozen=True)
class _Call:
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: Any
    module: str


# Attribute set on each tensor a counted call returns: the index of that call's op. A tag on the
# tensor (rather than its id) stays right when freed tensors' ids are reused.
_TAG = "_reference_counting_producer"


class _Recorder(TorchFunctionMode):
    """Turns every torch function call into an op as it runs, noting which op produced each
    tensor and how often each op's output is read. Torch turns the mode off while a recorded
    function runs, so the functions it calls inside are not recorded again."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self.shapes: list[tuple[int, ...]] = []
        self.reads: Counter[int] = Counter()
        self.first_source: dict[int, int] = {}
        self._paths = paths

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        call = _Call(getattr(func, "__name__", repr(func)), tuple(args), kwargs, out,
                     self._paths[-1])
        if call.name in _SHAPE_NAMES:
            return out
        op = _op(call)
        inputs = _tensors(call.args) + _tensors(list(kwargs.values()))
        for position, tensor in enumerate(inputs):
            source = getattr(tensor, _TAG, None)
            if source is not None:
                self.reads[source] += 1
                if position == 0 and op is not None:
                    self.first_source[len(self.ops)] = source
        if op is not None:
            for tensor in _tensors(out):
                setattr(tensor, _TAG, len(self.ops))
            self.ops.append(op)
            self.shapes.append(tuple(out.shape))
        return out


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _arg(call: _Call, index: int, name: str, default: Any = None) -> Any:
    if name in call.kwargs:
        return call.kwargs[name]
    return call.args[index] if len(call.args) > index else default


def extract_ops(model: nn.Module, input_shape: Sequence[int]) -> tuple[Op, ...]:
    """The op list of `model` (eval mode, batch 1) on a random input of `input_shape` (without
    the batch). Runs a deep copy with forward hooks (for module paths), so `model` is untouched.
    Raises ValueError for a function the reference has no rule for, naming it and its module."""
    twin = copy.deepcopy(model).eval()
    paths = [""]

    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:
        paths.pop()  # a forward hook that returns a value replaces the output: return None

    for path, module in twin.named_modules():
        module.register_forward_pre_hook(lambda _m, _a, p=path: paths.append(p))
        module.register_forward_hook(leave)
    example = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    recorder = _Recorder(paths)
    with torch.no_grad(), recorder:
        twin(example)
    return _mark_folds(recorder)


def _op(call: _Call) -> Op | None:
    """The op a call makes, with no BatchNorm marked foldable yet; None for a free call."""
    out = call.out
    if call.name in _FREE_NAMES:
        return None
    if call.name in _CONV_NAMES or call.name == "linear":
        weight: torch.Tensor = call.args[1]
        return Op(
            kind="conv" if call.name in _CONV_NAMES else "linear",
            module=call.module,
            outputs=out.numel(),
            channels=weight.shape[0],
            dot_length=weight[0].numel(),
            weights=weight.numel(),
            weight_zeros=weight.numel() - int(torch.count_nonzero(weight)),
            bias=_arg(call, 2, "bias") is not None,
        )
    if call.name == "batch_norm":
        return Op("batch_norm", call.module, out.numel(), channels=call.args[0].shape[1])
    if call.name == "hardtanh":
        low, high = _arg(call, 1, "min_val", -1.0), _arg(call, 2, "max_val", 1.0)
        if (low, high) != (0.0, 6.0):
            raise ValueError(f"{call.module}: hardtanh({low}, {high}) has no rule")
        return Op("activation", call.module, out.numel(), activation="relu6")
    if call.name in _ACTIVATION_NAMES:
        return Op("activation", call.module, out.numel(), activation=_ACTIVATION_NAMES[call.name])
    if call.name in _POOL_NAMES:
        return Op("avg_pool", call.module, out.numel(), window=_window(call))
    if call.name in _ADD_NAMES:
        return Op("add", call.module, out.numel())
    if call.name in _MUL_NAMES:
        return Op("scale", call.module, out.numel())
    raise ValueError(f"{call.module or 'top level'}: no rule for {call.name}")


def _window(call: _Call) -> int:
    source: torch.Tensor = call.args[0]
    if call.name == "avg_pool2d":
        kernel = _arg(call, 1, "kernel_size")
        padding = _arg(call, 3, "padding", 0)
        if padding not in (0, (0, 0), [0, 0]) or _arg(call, 4, "ceil_mode", False):
            raise ValueError(f"{call.module}: avg_pool2d with padding or ceil_mode has no rule")
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        return int(kh * kw)
    produced: torch.Tensor = call.out
    if call.name == "adaptive_avg_pool2d" and any(
        size % out for size, out in zip(source.shape[-2:], produced.shape[-2:], strict=True)
    ):
        raise ValueError(f"{call.module}: adaptive_avg_pool2d with uneven windows has no rule")
    return source.numel() // produced.numel()


def _mark_folds(recorder: _Recorder) -> tuple[Op, ...]:
    """Mark each BatchNorm that can fold: its input was produced by a conv or linear that nothing
    else reads, and it normalises that layer's output channels (dimension 1 of a conv's output, or
    of a linear's 2-d output)."""
    ops = list(recorder.ops)
    for index, op in enumerate(ops):
        origin = recorder.first_source.get(index, -1)
        if op.kind != "batch_norm" or origin < 0:
            continue
        layer, shape = ops[origin], recorder.shapes[origin]
        if layer.kind not in ("conv", "linear") or recorder.reads[origin] != 1:
            continue
        if layer.kind == "linear" and len(shape) != 2:
            continue
        if shape[1] == op.channels == layer.channels:
            ops[index] = dataclasses.replace(op, folds_into=origin)
    return tuple(ops)
