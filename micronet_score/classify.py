"""The one place that decides what a graph node computes.

`call_module` nodes are classified by module class (walking the class hierarchy), `call_function`
nodes by their target (aten ops by overload packet, so every overload of an op is covered), and
`call_method` nodes by method name. Nothing else in the package inspects class names.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import cache

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from micronet_score.opkinds import OpKind

K = OpKind


@cache
def _module_table() -> tuple[tuple[type, OpKind], ...]:
    """Ordered: subclasses before their bases (ReLU6 is a Hardtanh, ConvTranspose a _ConvNd)."""
    import torch.ao.nn.quantized as nnq
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase
    from torch.ao.quantization.observer import ObserverBase
    from torch.export._unlift import GuardsFn

    conv = nn.modules.conv
    quantized_conv = nnq.modules.conv
    return (
        (conv._ConvTransposeNd, K.CONV_TRANSPOSE),
        (conv._ConvNd, K.CONV),
        (quantized_conv._ConvTransposeNd, K.CONV_TRANSPOSE),
        (quantized_conv._ConvNd, K.CONV),
        (nn.Linear, K.LINEAR),
        (nnq.Linear, K.LINEAR),
        (FakeQuantizeBase, K.QUANTIZE),
        (ObserverBase, K.OBSERVER),
        (nnq.Quantize, K.QUANTIZE),
        (nn.modules.batchnorm._BatchNorm, K.BATCH_NORM),
        (nn.MultiheadAttention, K.MULTIHEAD_ATTENTION),
        (nn.LSTM, K.LSTM),
        (nn.LayerNorm, K.LAYER_NORM),
        (nn.GroupNorm, K.GROUP_NORM),
        (nn.Embedding, K.EMBEDDING),
        (nn.ReLU, K.RELU),
        (nn.ReLU6, K.RELU6),
        (nn.Hardtanh, K.HARDTANH),
        (nn.Sigmoid, K.SIGMOID),
        (nn.SiLU, K.SILU),
        (nn.Hardswish, K.HARDSWISH),
        (nn.Hardsigmoid, K.HARDSIGMOID),
        (nn.GELU, K.GELU),
        (nn.Tanh, K.TANH),
        (nn.LeakyReLU, K.LEAKY_RELU),
        (nn.ELU, K.ELU),
        (nn.Softmax, K.SOFTMAX),
        (nn.LogSoftmax, K.LOG_SOFTMAX),
        (nn.modules.pooling._AvgPoolNd, K.AVG_POOL),
        (nn.modules.pooling._AdaptiveAvgPoolNd, K.ADAPTIVE_AVG_POOL),
        (nn.modules.pooling._MaxPoolNd, K.MAX_POOL),
        (nn.modules.pooling._AdaptiveMaxPoolNd, K.ADAPTIVE_MAX_POOL),
        (nn.modules.dropout._DropoutNd, K.FREE),
        *((cls, K.FREE) for cls in _eval_identity_modules()),
        (nn.Identity, K.FREE),
        (nn.Flatten, K.FREE),
        (nn.Unflatten, K.FREE),
        (torch.ao.quantization.QuantStub, K.FREE),
        (torch.ao.quantization.DeQuantStub, K.FREE),
        (torch.ao.nn.quantized.DeQuantize, K.FREE),
        (GuardsFn, K.FREE),
    )


def _eval_identity_modules() -> tuple[type, ...]:
    try:
        from torchvision.ops import StochasticDepth
    except ImportError:
        return ()
    return (StochasticDepth,)


_MODULE_KINDS: dict[type, OpKind | None] = {}


def module_kind(cls: type) -> OpKind | None:
    """Kind of a module class, by walking its bases (cached: graphs repeat few classes)."""
    if cls not in _MODULE_KINDS:
        _MODULE_KINDS[cls] = next(
            (kind for base, kind in _module_table() if issubclass(cls, base)), None
        )
    return _MODULE_KINDS[cls]


def _functions() -> dict[Callable[..., object], OpKind]:
    table: dict[Callable[..., object], OpKind] = {}
    groups: dict[OpKind, tuple[Callable[..., object], ...]] = {
        K.CONV: (F.conv1d, F.conv2d, F.conv3d),
        K.CONV_TRANSPOSE: (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d),
        K.LINEAR: (F.linear,),
        K.MATMUL: (torch.matmul, torch.mm, torch.bmm, operator.matmul),
        K.BATCH_NORM: (F.batch_norm,),
        K.LAYER_NORM: (F.layer_norm,),
        K.GROUP_NORM: (F.group_norm,),
        K.EMBEDDING: (F.embedding,),
        K.ATTENTION: (F.scaled_dot_product_attention,),
        K.AVG_POOL: (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d),
        K.ADAPTIVE_AVG_POOL: (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d),
        K.MAX_POOL: (F.max_pool1d, F.max_pool2d, F.max_pool3d),
        K.ADAPTIVE_MAX_POOL: (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d),
        K.MEAN: (torch.mean,),
        K.SUM: (torch.sum,),
        K.ADD: (torch.add, operator.add, operator.iadd),
        K.SUB: (torch.sub, operator.sub, operator.isub, torch.rsub),
        K.MUL: (torch.mul, operator.mul, operator.imul),
        K.DIV: (torch.div, operator.truediv, operator.itruediv),
        K.RELU: (F.relu, F.relu_, torch.relu, torch.relu_),
        K.RELU6: (F.relu6,),
        K.HARDTANH: (F.hardtanh, F.hardtanh_),
        K.SIGMOID: (torch.sigmoid, F.sigmoid),
        K.SILU: (F.silu,),
        K.HARDSWISH: (F.hardswish,),
        K.HARDSIGMOID: (F.hardsigmoid,),
        K.GELU: (F.gelu,),
        K.TANH: (torch.tanh, F.tanh),
        K.LEAKY_RELU: (F.leaky_relu, F.leaky_relu_),
        K.ELU: (F.elu, F.elu_),
        K.SOFTMAX: (F.softmax, torch.softmax),
        K.LOG_SOFTMAX: (F.log_softmax, torch.log_softmax),
        K.QUANTIZE: (torch.quantize_per_tensor, torch.quantize_per_channel),
        K.FREE: (
            torch.cat, torch.concat, torch.stack, torch.flatten, torch.reshape, torch.permute,
            torch.transpose, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split,
            torch.narrow, torch.t, torch.clone, torch.dequantize, torch._assert, operator.getitem,
            getattr, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
            torch.Tensor.size, *_eval_identities(),
        ),
    }
    for kind, functions in groups.items():
        for function in functions:
            table[function] = kind
    return table


def _eval_identities() -> tuple[Callable[..., object], ...]:
    """torchvision's stochastic depth, written as a function (it is `torch.fx.wrap`-ped, so it
    stays one node): the identity in eval mode, as dropout is."""
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:
        return ()
    return (stochastic_depth,)


_METHODS: dict[str, OpKind] = {
    "relu": K.RELU, "relu_": K.RELU, "sigmoid": K.SIGMOID, "tanh": K.TANH,
    "softmax": K.SOFTMAX, "log_softmax": K.LOG_SOFTMAX,
    "add": K.ADD, "add_": K.ADD, "sub": K.SUB, "sub_": K.SUB,
    "mul": K.MUL, "mul_": K.MUL, "div": K.DIV, "div_": K.DIV,
    "mean": K.MEAN, "sum": K.SUM, "matmul": K.MATMUL, "bmm": K.MATMUL, "mm": K.MATMUL,
    **dict.fromkeys(
        (
            "view", "view_as", "reshape", "reshape_as", "flatten", "permute", "transpose",
            "contiguous", "size", "dim", "unsqueeze", "squeeze", "expand", "expand_as", "chunk",
            "split", "to", "float", "half", "bfloat16", "type_as", "clone", "detach",
            "dequantize", "repeat", "unbind", "t", "narrow", "numel",
        ),
        K.FREE,
    ),
}

_ATEN: dict[str, OpKind] = {
    **dict.fromkeys(("conv1d", "conv2d", "conv3d"), K.CONV),
    **dict.fromkeys(("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"), K.CONV_TRANSPOSE),
    "linear": K.LINEAR,
    **dict.fromkeys(("mm", "bmm", "matmul"), K.MATMUL),
    **dict.fromkeys(
        (
            "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
            "native_batch_norm", "_native_batch_norm_legit_functional",
        ),
        K.BATCH_NORM,
    ),
    **dict.fromkeys(("layer_norm", "native_layer_norm"), K.LAYER_NORM),
    **dict.fromkeys(("group_norm", "native_group_norm"), K.GROUP_NORM),
    "embedding": K.EMBEDDING,
    **dict.fromkeys(
        (
            "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
        ),
        K.ATTENTION,
    ),
    **dict.fromkeys(("avg_pool1d", "avg_pool2d", "avg_pool3d"), K.AVG_POOL),
    **dict.fromkeys(
        ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
         "_adaptive_avg_pool2d", "_adaptive_avg_pool3d"),
        K.ADAPTIVE_AVG_POOL,
    ),
    **dict.fromkeys(
        ("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
         "max_pool3d_with_indices"),
        K.MAX_POOL,
    ),
    **dict.fromkeys(("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"),
                    K.ADAPTIVE_MAX_POOL),
    "mean": K.MEAN, "sum": K.SUM,
    **dict.fromkeys(("add", "add_"), K.ADD),
    **dict.fromkeys(("sub", "sub_", "rsub"), K.SUB),
    **dict.fromkeys(("mul", "mul_"), K.MUL),
    **dict.fromkeys(("div", "div_"), K.DIV),
    **dict.fromkeys(("relu", "relu_"), K.RELU),
    "relu6": K.RELU6,
    **dict.fromkeys(("hardtanh", "hardtanh_"), K.HARDTANH),
    **dict.fromkeys(("sigmoid", "sigmoid_"), K.SIGMOID),
    **dict.fromkeys(("silu", "silu_"), K.SILU),
    **dict.fromkeys(("hardswish", "hardswish_"), K.HARDSWISH),
    **dict.fromkeys(("hardsigmoid", "hardsigmoid_"), K.HARDSIGMOID),
    "gelu": K.GELU, "tanh": K.TANH,
    **dict.fromkeys(("leaky_relu", "leaky_relu_"), K.LEAKY_RELU),
    **dict.fromkeys(("elu", "elu_"), K.ELU),
    **dict.fromkeys(("softmax", "_softmax"), K.SOFTMAX),
    **dict.fromkeys(("log_softmax", "_log_softmax"), K.LOG_SOFTMAX),
    **dict.fromkeys(
        (
            "cat", "concat", "stack", "view", "_unsafe_view", "reshape", "permute", "t",
            "transpose", "expand", "clone", "_to_copy", "to", "alias", "detach", "squeeze",
            "unsqueeze", "flatten", "split", "split_with_sizes", "slice", "select",
            "contiguous", "dropout", "native_dropout", "lift_fresh_copy", "sym_size", "unbind",
            "chunk", "_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
            "copy", "empty_like", "zeros_like", "dequantize", "type_as", "unflatten", "narrow",
        ),
        K.FREE,
    ),
}

# PT2E quantize/dequantize ops live in these namespaces; their other ops (choose_qparams) are free.
_QUANTIZE_NAMESPACES = ("quantized_decomposed", "torchao")
# Ops of torch.ao's quantized engine (FX-converted models), by name.
_QUANTIZED_ENGINE: dict[str, OpKind] = {
    "add": K.ADD, "add_relu": K.ADD, "add_scalar": K.ADD, "add_scalar_relu": K.ADD,
    "mul": K.MUL, "mul_relu": K.MUL, "mul_scalar": K.MUL, "mul_scalar_relu": K.MUL,
    "cat": K.FREE, "cat_relu": K.FREE,
}
_QUANTIZED_ENGINE_RELU = frozenset(
    {"add_relu", "add_scalar_relu", "mul_relu", "mul_scalar_relu", "cat_relu"}
)

_FUNCTION_TABLE: dict[Callable[..., object], OpKind] | None = None


def function_kind(target: object) -> OpKind | None:
    global _FUNCTION_TABLE
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        namespace, name = op_name(target)
        if namespace in _QUANTIZE_NAMESPACES:
            return K.QUANTIZE if name.startswith(("quantize", "dequantize")) else K.FREE
        if namespace == "quantized":
            return _QUANTIZED_ENGINE.get(name)
        return _ATEN.get(name) if namespace == "aten" else None
    if _FUNCTION_TABLE is None:
        _FUNCTION_TABLE = _functions()
    try:
        kind: OpKind | None = _FUNCTION_TABLE.get(target)  # type: ignore[call-overload]
    except TypeError:  # unhashable target
        return None
    return kind


def node_kind(node: torch.fx.Node, root: nn.Module) -> OpKind | None:
    """What the node computes, or None when no rule covers it (it is then reported as uncounted)."""
    if node.op == "call_module":
        return module_kind(type(root.get_submodule(str(node.target))))
    if node.op == "call_function":
        return function_kind(node.target)
    if node.op == "call_method":
        return _METHODS.get(str(node.target))
    return K.FREE


def target_name(node: torch.fx.Node, root: nn.Module) -> str:
    """A readable name of what the node calls: module class, function or method name."""
    if node.op == "call_module":
        return type(root.get_submodule(str(node.target))).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    target = node.target
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return ".".join(op_name(target))
    return getattr(target, "__name__", str(target))


@cache
def _fused_relu_modules() -> tuple[type, ...]:
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.intrinsic.quantized.dynamic as nniqd

    return (
        nniq.ConvReLU1d, nniq.ConvReLU2d, nniq.ConvReLU3d, nniq.LinearReLU, nniq.BNReLU2d,
        nniq.BNReLU3d, nniq.ConvAddReLU2d, nniqd.LinearReLU, nniqat.ConvReLU1d,
        nniqat.ConvReLU2d, nniqat.ConvReLU3d, nniqat.ConvBnReLU1d, nniqat.ConvBnReLU2d,
        nniqat.ConvBnReLU3d, nniqat.LinearReLU,
    )


def fused_activation(node: torch.fx.Node, root: nn.Module) -> OpKind | None:
    """The relu a fused layer or quantized op applies to its output (ConvReLU2d, add_relu)."""
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        return K.RELU if isinstance(module, _fused_relu_modules()) else None
    target = node.target
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        namespace, name = op_name(target)
        if namespace == "quantized" and name in _QUANTIZED_ENGINE_RELU:
            return K.RELU
    return None


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
