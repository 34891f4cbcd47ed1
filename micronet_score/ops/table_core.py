"""Built-in op specs: layers with weights, normalizations, pooling, element-wise arithmetic,
activations, data movement and quantization. Strings only: see `micronet_score.ops.spec`.

Each `ops` entry names an aten overload packet as it appears in the pre-dispatch IR (what
`torch.export.export` records) and, where the decomposition differs, in the core-ATen IR (what
`run_decompositions()` leaves): `conv2d` / `convolution`, `linear` / `addmm`, `batch_norm` /
`_native_batch_norm_legit_no_training`, `hardswish` / `add`, `clamp`, `mul`, `div`.
"""

from __future__ import annotations

from micronet_score.ops.spec import OpSpec, Trait

T = Trait
F = "torch.nn.functional."
_FORMULAS = "micronet_score.ops.formulas_core:"
_DOT = "micronet_score.ops.formulas_dot:"
_CONV_ATTRIBUTES = ("groups", "stride", "padding", "dilation", "output_padding", "transposed")


def _aten(*names: str) -> tuple[str, ...]:
    return tuple(f"aten::{name}" for name in names)


def _activation(kind: str, *, modules: tuple[str, ...] = (), functions: tuple[str, ...] = (),
                methods: tuple[str, ...] = (), ops: tuple[str, ...] = ()) -> OpSpec:
    return OpSpec(
        kind, {"micronet": _FORMULAS + "activation"}, modules=modules, functions=functions,
        methods=methods, ops=_aten(*ops), traits=frozenset({T.ACTIVATION, T.SHAPE_PRESERVING}),
        description="per element, the rule set's `activations` cost",
    )


SPECS: tuple[OpSpec, ...] = (
    OpSpec(
        "conv",
        {"micronet": _DOT + "dot_product", "imt_2022": _DOT + "imt_2022_dot_product",
         "macs": _DOT + "multiply_accumulates"},
        modules=("torch.nn.modules.conv._ConvNd", "torch.ao.nn.quantized.modules.conv._ConvNd"),
        functions=(F + "conv1d", F + "conv2d", F + "conv3d"),
        ops=_aten("conv1d", "conv2d", "conv3d", "convolution", "_convolution"),
        traits=frozenset({T.DOT_PRODUCT, T.FOLD_TARGET}),
        attributes=_CONV_ATTRIBUTES,
        description="per output: one product per non-zero weight of its filter, the sum of them, "
        "and a bias add",
    ),
    OpSpec(
        "conv_transpose",
        {"micronet": _DOT + "transposed_conv"},
        modules=("torch.nn.modules.conv._ConvTransposeNd",
                 "torch.ao.nn.quantized.modules.conv._ConvTransposeNd"),
        functions=(F + "conv_transpose1d", F + "conv_transpose2d", F + "conv_transpose3d"),
        ops=_aten("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
        traits=frozenset({T.DOT_PRODUCT, T.FOLD_TARGET}),
        attributes=_CONV_ATTRIBUTES,
        description="only the products that land inside the output; per output, the products "
        "landing in it minus one adds, plus a bias add",
    ),
    OpSpec(
        "linear",
        {"micronet": _DOT + "dot_product", "imt_2022": _DOT + "imt_2022_dot_product",
         "macs": _DOT + "multiply_accumulates"},
        modules=("torch.nn.Linear", "torch.ao.nn.quantized.Linear"),
        functions=(F + "linear",),
        ops=_aten("linear"),
        traits=frozenset({T.DOT_PRODUCT, T.FOLD_TARGET}),
        description="per output row: as a 1x1 conv",
    ),
    OpSpec(
        "addmm",
        {"micronet": _DOT + "addmm"},
        functions=("torch.addmm",),
        methods=("addmm",),
        ops=_aten("addmm"),
        traits=frozenset({T.DOT_PRODUCT, T.FOLD_TARGET}),
        attributes=("beta", "alpha"),
        description="beta*input + alpha*(mat1 @ mat2): a linear layer when mat2 is stored",
    ),
    OpSpec(
        "matmul",
        {"micronet": _DOT + "matmul"},
        functions=("torch.matmul", "torch.mm", "torch.bmm", "operator.matmul"),
        methods=("matmul", "mm", "bmm"),
        ops=_aten("mm", "bmm", "matmul"),
        traits=frozenset({T.DOT_PRODUCT}),
        description="n products and n - 1 adds per output of a length-n dot product; zero "
        "weights skipped when one side is stored",
    ),
    OpSpec(
        "baddbmm",
        {"micronet": _DOT + "baddbmm"},
        functions=("torch.baddbmm",),
        methods=("baddbmm",),
        ops=_aten("baddbmm"),
        attributes=("beta", "alpha"),
        description="beta*input + alpha*(batch1 @ batch2): a batched matmul, one add per output, "
        "one product per output for each scale that is not 1",
    ),
    OpSpec(
        "batch_norm",
        {"micronet": _FORMULAS + "batch_norm"},
        modules=("torch.nn.modules.batchnorm._BatchNorm",),
        functions=(F + "batch_norm",),
        ops=_aten("batch_norm", "_native_batch_norm_legit_no_training",
                  "_native_batch_norm_legit", "native_batch_norm",
                  "_native_batch_norm_legit_functional"),
        traits=frozenset({T.FOLDABLE, T.SHAPE_PRESERVING, T.STATEFUL}),
        attributes=("eps",),
        description="folded into the conv or linear before it when valid; otherwise one product "
        "and one add per element, two values per channel",
    ),
    OpSpec(
        "layer_norm",
        {"micronet": _FORMULAS + "normalization"},
        modules=("torch.nn.LayerNorm",),
        functions=(F + "layer_norm",),
        ops=_aten("layer_norm", "native_layer_norm"),
        traits=frozenset({T.SHAPE_PRESERVING}),
        attributes=("normalized_shape", "eps"),
        description="per element 2 products and 3 adds, per group 3 products and 1 add, affine "
        "1 product and 1 add per element",
    ),
    OpSpec(
        "group_norm",
        {"micronet": _FORMULAS + "normalization"},
        modules=("torch.nn.GroupNorm",),
        functions=(F + "group_norm",),
        ops=_aten("group_norm", "native_group_norm"),
        traits=frozenset({T.SHAPE_PRESERVING}),
        attributes=("num_groups", "group", "eps"),
        description="as layer_norm, over each group of channels",
    ),
    OpSpec(
        "embedding",
        {"micronet": _FORMULAS + "embedding"},
        modules=("torch.nn.Embedding",),
        functions=(F + "embedding",),
        ops=_aten("embedding"),
        description="a table lookup: no arithmetic; the table is stored",
    ),
    OpSpec(
        "avg_pool",
        {"micronet": _FORMULAS + "pool", "imt_2022": _FORMULAS + "imt_2022_avg_pool"},
        modules=("torch.nn.modules.pooling._AvgPoolNd",),
        functions=(F + "avg_pool1d", F + "avg_pool2d", F + "avg_pool3d"),
        ops=_aten("avg_pool1d", "avg_pool2d", "avg_pool3d"),
        attributes=("kernel_size",),
        description="per output: window - 1 adds and one division",
    ),
    OpSpec(
        "adaptive_avg_pool",
        {"micronet": _FORMULAS + "adaptive_pool"},
        modules=("torch.nn.modules.pooling._AdaptiveAvgPoolNd",),
        functions=(F + "adaptive_avg_pool1d", F + "adaptive_avg_pool2d", F + "adaptive_avg_pool3d"),
        ops=_aten("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                  "_adaptive_avg_pool2d", "_adaptive_avg_pool3d"),
        description="per output: its exact window size - 1 adds and one division",
    ),
    OpSpec(
        "max_pool",
        {"micronet": _FORMULAS + "pool"},
        modules=("torch.nn.modules.pooling._MaxPoolNd",),
        functions=(F + "max_pool1d", F + "max_pool2d", F + "max_pool3d",
                   F + "max_pool1d_with_indices", F + "max_pool2d_with_indices",
                   F + "max_pool3d_with_indices"),
        ops=_aten("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
                  "max_pool3d_with_indices"),
        attributes=("kernel_size",),
        description="per output: window - 1 comparisons, counted as adds",
    ),
    OpSpec(
        "adaptive_max_pool",
        {"micronet": _FORMULAS + "adaptive_pool"},
        modules=("torch.nn.modules.pooling._AdaptiveMaxPoolNd",),
        functions=(F + "adaptive_max_pool1d", F + "adaptive_max_pool2d", F + "adaptive_max_pool3d"),
        ops=_aten("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"),
        description="per output: its exact window size - 1 comparisons",
    ),
    OpSpec("mean", {"micronet": _FORMULAS + "reduction"}, functions=("torch.mean",),
           methods=("mean",), ops=_aten("mean"),
           description="n - 1 adds and one division per output of n values"),
    OpSpec("sum", {"micronet": _FORMULAS + "reduction"}, functions=("torch.sum",),
           methods=("sum",), ops=_aten("sum"), description="n - 1 adds per output of n values"),
    OpSpec("add", {"micronet": _FORMULAS + "elementwise_add"},
           functions=("torch.add", "operator.add", "operator.iadd"),
           methods=("add", "add_"),
           ops=(*_aten("add", "add_"), "quantized::add", "quantized::add_scalar",
                "quantized::add_relu", "quantized::add_scalar_relu"),
           description="one add per output element"),
    OpSpec("sub", {"micronet": _FORMULAS + "elementwise_add"},
           functions=("torch.sub", "operator.sub", "operator.isub", "torch.rsub"),
           methods=("sub", "sub_"), ops=_aten("sub", "sub_", "rsub"),
           description="one add per output element"),
    OpSpec("mul", {"micronet": _FORMULAS + "elementwise_mul"},
           functions=("torch.mul", "operator.mul", "operator.imul"),
           methods=("mul", "mul_"),
           ops=(*_aten("mul", "mul_"), "quantized::mul", "quantized::mul_scalar",
                "quantized::mul_relu", "quantized::mul_scalar_relu"),
           description="one product per output element"),
    OpSpec("div", {"micronet": _FORMULAS + "elementwise_mul"},
           functions=("torch.div", "operator.truediv", "operator.itruediv"),
           methods=("div", "div_"), ops=_aten("div", "div_"),
           description="one division (a product) per output element"),
    _activation("relu", modules=("torch.nn.ReLU",),
                functions=(F + "relu", F + "relu_", "torch.relu", "torch.relu_"),
                methods=("relu", "relu_"), ops=("relu", "relu_")),
    _activation("relu6", modules=("torch.nn.ReLU6",), functions=(F + "relu6",),
                ops=("relu6",)),
    _activation("hardtanh", modules=("torch.nn.Hardtanh",),
                functions=(F + "hardtanh", F + "hardtanh_"), ops=("hardtanh", "hardtanh_")),
    _activation("sigmoid", modules=("torch.nn.Sigmoid",),
                functions=("torch.sigmoid", F + "sigmoid"), methods=("sigmoid", "sigmoid_"),
                ops=("sigmoid", "sigmoid_")),
    _activation("silu", modules=("torch.nn.SiLU",), functions=(F + "silu",),
                ops=("silu", "silu_")),
    _activation("hardswish", modules=("torch.nn.Hardswish",), functions=(F + "hardswish",),
                ops=("hardswish", "hardswish_")),
    _activation("hardsigmoid", modules=("torch.nn.Hardsigmoid",),
                functions=(F + "hardsigmoid",), ops=("hardsigmoid", "hardsigmoid_")),
    _activation("gelu", modules=("torch.nn.GELU",), functions=(F + "gelu",), ops=("gelu",)),
    _activation("tanh", modules=("torch.nn.Tanh",), functions=("torch.tanh", F + "tanh"),
                methods=("tanh", "tanh_"), ops=("tanh", "tanh_")),
    _activation("leaky_relu", modules=("torch.nn.LeakyReLU",),
                functions=(F + "leaky_relu", F + "leaky_relu_"),
                ops=("leaky_relu", "leaky_relu_")),
    _activation("elu", modules=("torch.nn.ELU",), functions=(F + "elu", F + "elu_"),
                ops=("elu", "elu_")),
    # softmin is softmax(-x): the negation flips sign bits, free
    _activation("softmax", modules=("torch.nn.Softmax", "torch.nn.Softmax2d", "torch.nn.Softmin"),
                functions=(F + "softmax", "torch.softmax", F + "softmin"),
                methods=("softmax",),
                ops=("softmax", "_softmax")),
    _activation("log_softmax", modules=("torch.nn.LogSoftmax",),
                functions=(F + "log_softmax", "torch.log_softmax"), methods=("log_softmax",),
                ops=("log_softmax", "_log_softmax")),
    OpSpec(
        "free",
        {"micronet": _FORMULAS + "free"},
        modules=(
            "torch.nn.modules.dropout._DropoutNd", "torch.nn.Identity", "torch.nn.Flatten",
            "torch.nn.Unflatten", "torch.ao.quantization.QuantStub",
            "torch.ao.quantization.DeQuantStub", "torch.ao.nn.quantized.DeQuantize",
            "torch.export._unlift.GuardsFn", "torchvision.ops.StochasticDepth",
        ),
        functions=(
            "torch.cat", "torch.concat", "torch.stack", "torch.flatten", "torch.reshape",
            "torch.permute", "torch.transpose", "torch.squeeze", "torch.unsqueeze",
            "torch.chunk", "torch.split", "torch.narrow", "torch.t", "torch.clone", "torch.unbind",
            "torch.dequantize", "torch._assert", "operator.getitem", "builtins.getattr",
            F + "dropout", F + "dropout1d", F + "dropout2d", F + "dropout3d",
            F + "alpha_dropout", "torch.Tensor.size", "torchvision.ops.stochastic_depth",
        ),
        methods=(
            "view", "view_as", "reshape", "reshape_as", "flatten", "permute", "transpose",
            "contiguous", "size", "dim", "unsqueeze", "squeeze", "expand", "expand_as", "chunk",
            "split", "to", "float", "half", "bfloat16", "type_as", "clone", "detach",
            "dequantize", "repeat", "unbind", "t", "narrow", "numel",
        ),
        ops=(*_aten(
            "cat", "concat", "stack", "view", "_unsafe_view", "reshape", "permute", "t",
            "transpose", "expand", "clone", "_to_copy", "to", "alias", "detach", "squeeze",
            "unsqueeze", "flatten", "split", "split_with_sizes", "slice", "select",
            "contiguous", "dropout", "native_dropout", "lift_fresh_copy", "sym_size", "unbind",
            "chunk", "_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
            "copy", "copy_", "empty_like", "zeros_like", "dequantize", "type_as", "unflatten",
            "narrow",
        ), "quantized::cat", "quantized::cat_relu", *(
            f"quantized_decomposed::{name}" for name in (
                "choose_qparams", "choose_qparams_symmetric", "choose_qparams_per_token",
                "choose_qparams_per_token_asymmetric")
        ), "torchao::choose_qparams_affine"),
        traits=frozenset({T.FREE}),
        description="moves, copies or relabels data (views, cat, dropout in eval, casts): free",
    ),
    OpSpec(
        "quantize",
        {"micronet": _FORMULAS + "quantize"},
        modules=("torch.ao.quantization.fake_quantize.FakeQuantizeBase",
                 "torch.ao.nn.quantized.Quantize"),
        functions=("torch.quantize_per_tensor", "torch.quantize_per_channel"),
        ops=(
            *(f"quantized_decomposed::{name}" for name in (
                "quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
                "dequantize_per_channel", "quantize_per_channel_group",
                "dequantize_per_channel_group", "quantize_per_token", "dequantize_per_token")),
            *(f"torchao::{name}" for name in (
                "quantize_affine", "dequantize_affine", "quantize_affine_float8_non_decomposed",
                "dequantize_affine_float8_non_decomposed")),
        ),
        traits=frozenset({T.QUANTIZER}),
        description="no arithmetic; bounds the width of its values and stores a scale and a "
        "zero point",
    ),
    OpSpec(
        "observer",
        {"micronet": _FORMULAS + "free"},
        modules=("torch.ao.quantization.observer.ObserverBase",),
        traits=frozenset({T.SHAPE_PRESERVING}),
        description="a prepared, not converted, model: refused",
    ),
)

_INTRINSIC = "torch.ao.nn.intrinsic."
# Spellings that apply a relu to their output besides their own computation (fused layers and
# the quantized engine's `*_relu` ops): the relu is charged on top of the kind's formula.
FUSED_RELU: tuple[str, ...] = (
    *(_INTRINSIC + "quantized." + name for name in (
        "ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "LinearReLU", "BNReLU2d", "BNReLU3d",
        "ConvAddReLU2d")),
    _INTRINSIC + "quantized.dynamic.LinearReLU",
    *(_INTRINSIC + "qat." + name for name in (
        "ConvReLU1d", "ConvReLU2d", "ConvReLU3d", "ConvBnReLU1d", "ConvBnReLU2d", "ConvBnReLU3d",
        "LinearReLU")),
    "quantized::add_relu", "quantized::add_scalar_relu", "quantized::mul_relu",
    "quantized::mul_scalar_relu", "quantized::cat_relu",
)
