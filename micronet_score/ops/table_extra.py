"""Built-in op specs: element-wise math, reductions, resampling, more normalizations and
activations, and zero-cost data movement. Strings only: see `micronet_score.ops.spec`; the
formulas and their counts are in `micronet_score.ops.formulas_extra`.

Each `ops` entry names the aten overload packet `torch.export.export` records and, where
`run_decompositions()` spells the op differently, the core-ATen one: `pad` / `constant_pad_nd`
(reflection and replication pads become index arithmetic and `index`), `pixel_shuffle` / `view`,
`permute` and `clone`, `tile` / `repeat`, `masked_fill` / `where`, `linalg_vector_norm` / `pow`,
`sum`, `pow`, `std` / `var` and `sqrt`, `rms_norm` / `pow`, `mean`, `add`, `rsqrt`, `mul`,
`instance_norm` / `_native_batch_norm_legit`, `col2im` / `index_put`, `softplus` / `mul`, `exp`,
`log1p`, `div`, `gt`, `where`.
"""

from __future__ import annotations

from micronet_score.ops.spec import OpSpec, Trait

T = Trait
F = "torch.nn.functional."
_FORMULAS = "micronet_score.ops.formulas_extra:"
_FREE = "micronet_score.ops.formulas_core:free"
_ONE = _FORMULAS + "one_product"


def _aten(*names: str) -> tuple[str, ...]:
    return tuple(f"aten::{name}" for name in names)


def _torch(*names: str) -> tuple[str, ...]:
    return tuple(f"torch.{name}" for name in names)


def _with_inplace(*names: str) -> tuple[str, ...]:
    return tuple(spelling for name in names for spelling in (name, f"{name}_"))


def _activation(kind: str, count: str, *, modules: tuple[str, ...] = (),
                functions: tuple[str, ...] = (), methods: tuple[str, ...] = (),
                ops: tuple[str, ...] = (), formula: str = "micronet_score.ops.formulas_core:"
                "activation", attributes: tuple[str, ...] = ()) -> OpSpec:
    return OpSpec(
        kind, {"micronet": formula}, modules=modules, functions=functions, methods=methods,
        ops=_aten(*ops), traits=frozenset({T.ACTIVATION, T.SHAPE_PRESERVING}),
        attributes=attributes,
        description=f"per element, the rule set's `activations` cost (micronet: {count})",
    )


_TRANSCENDENTAL = (
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal",
    "erf", "erfc", "erfinv", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
    "asinh", "acosh", "atanh",
)
_COMPARISONS = ("gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal",
                "less_equal", "not_equal", "abs", "sign", "sgn", "isinf", "isnan", "isfinite",
                "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or",
                "bitwise_xor")
_ROUNDINGS = ("floor", "ceil", "round", "trunc", "fix", "floor_divide")
_CREATE = ("arange", "zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like",
           "empty_like", "scalar_tensor", "tensor", "as_tensor", "linspace")
_MOVE = ("roll", "flip", "fliplr", "flipud", "rot90", "gather", "index_select",
         "take_along_dim", "masked_fill", "where", "repeat_interleave", "tile", "triu", "tril",
         "movedim", "moveaxis", "swapaxes", "swapdims", "hstack", "vstack", "dstack",
         "column_stack", "concatenate", "meshgrid", "tensor_split", "hsplit", "vsplit",
         "broadcast_to", "broadcast_tensors", "select", "diagonal", "neg", "negative",
         "logical_not", "bitwise_not", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
         "native_channel_shuffle", "constant_pad_nd", "index_copy", "unflatten")

_OTHERS: tuple[OpSpec, ...] = (
    OpSpec(
        "data_movement",
        {"micronet": _FREE},
        modules=(
            "torch.nn.modules.padding._ConstantPadNd", "torch.nn.modules.padding._ReflectionPadNd",
            "torch.nn.modules.padding._ReplicationPadNd",
            "torch.nn.modules.padding._CircularPadNd", "torch.nn.PixelShuffle",
            "torch.nn.PixelUnshuffle", "torch.nn.ChannelShuffle", "torch.nn.Unfold",
        ),
        functions=(
            *_torch(*_CREATE, *_MOVE),
            F + "pad", F + "pixel_shuffle", F + "pixel_unshuffle", F + "channel_shuffle",
            F + "native_channel_shuffle", F + "unfold", F + "one_hot",
            "operator.neg", "operator.invert",
        ),
        methods=(
            "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zero_", "fill_",
            "roll", "flip", "fliplr", "flipud", "rot90", "gather", "index_select",
            "masked_fill", "masked_fill_", "where", "repeat_interleave", "tile", "triu",
            "tril", "triu_", "tril_", "movedim", "moveaxis", "swapaxes", "swapdims", "unfold",
            "neg", "neg_", "negative", "logical_not", "bitwise_not", "unflatten", "squeeze_",
            "unsqueeze_", "transpose_", "copy_", "detach_", "requires_grad_", "int", "long",
            "bool", "double", "short", "byte", "char", "cpu", "cuda", "type", "broadcast_to",
            "diagonal", "select", "index_copy", "take_along_dim", "tensor_split", "item",
        ),
        ops=_aten(
            "pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
            "replication_pad1d", "replication_pad2d", "replication_pad3d", "_pad_circular",
            "_pad_enum", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
            "native_channel_shuffle", "upsample_nearest1d", "upsample_nearest2d",
            "upsample_nearest3d", "_upsample_nearest_exact1d", "_upsample_nearest_exact2d",
            "_upsample_nearest_exact3d", "arange", "zeros", "ones", "full", "empty",
            "empty_strided", "scalar_tensor", "ones_like", "full_like", "new_zeros", "new_ones",
            "new_full", "new_empty", "new_empty_strided", "fill", "fill_", "zero", "zero_",
            "roll", "flip", "rot90", "gather", "index_select", "take_along_dim", "index",
            "_unsafe_index", "masked_fill", "masked_fill_", "where", "repeat", "tile",
            "repeat_interleave", "triu", "tril", "movedim", "moveaxis", "swapaxes", "swapdims",
            "hstack", "vstack", "dstack", "column_stack", "concatenate", "meshgrid", "one_hot",
            "im2col", "unfold", "as_strided", "expand_as", "view_as", "reshape_as", "mT", "mH",
            "adjoint", "numpy_T", "slice_scatter", "select_scatter", "diagonal",
            "diagonal_scatter", "index_copy", "lift_fresh", "detach_", "_assert_async",
            "_local_scalar_dense", "sym_numel", "sym_stride", "sym_storage_offset", "neg",
            "negative", "logical_not", "bitwise_not", "resolve_conj", "resolve_neg",
            "expand_copy", "permute_copy", "view_copy", "slice_copy", "select_copy",
            "unsqueeze_copy", "squeeze_copy", "t_copy", "transpose_copy", "alias_copy",
            "unbind_copy", "split_copy", "as_strided_copy", "unsqueeze_", "squeeze_",
            "transpose_", "tensor_split", "broadcast_to", "item",
        ),
        traits=frozenset({T.FREE}),
        description="pads, shuffles, nearest upsampling, gathers and indexing, selects (where, "
        "masked_fill), rolls, flips, repeats, constants (arange, zeros, full) and negation "
        "move or create data: free",
    ),
    OpSpec(
        "index_put",
        {"micronet": "micronet_score.ops.formulas_resample:index_put"},
        methods=("index_put", "index_put_"),
        functions=("torch.index_put",),
        ops=_aten("index_put", "index_put_", "_unsafe_index_put"),
        description="writing values at indices is free; with accumulate=True one add per "
        "value written",
    ),
    OpSpec(
        "transcendental",
        {"micronet": _ONE},
        functions=(*_torch(*_TRANSCENDENTAL), "torch.special.expm1", "torch.special.erf",
                   "torch.special.log1p", "torch.special.exp2", "torch.atan2"),
        methods=(*_with_inplace(*_TRANSCENDENTAL), "atan2"),
        ops=_aten(*_with_inplace(*_TRANSCENDENTAL), "atan2"),
        description="one product per output element: exp, log, log1p, expm1, sqrt, rsqrt, "
        "erf, trigonometric functions, and the reciprocal (a division)",
    ),
    OpSpec(
        "comparison",
        {"micronet": _ONE},
        functions=(*_torch(*_COMPARISONS), "operator.gt", "operator.lt", "operator.ge",
                   "operator.le", "operator.and_", "operator.or_", "operator.xor"),
        methods=(*_COMPARISONS, "abs_", "__and__", "__or__", "__xor__"),
        ops=_aten(*_COMPARISONS, "abs_"),
        description="one comparison (or boolean operation) per output element, counted as a "
        "product as relu is: gt, eq, ..., abs, sign, logical and/or",
    ),
    OpSpec(
        "rounding",
        {"micronet": _ONE},
        functions=(*_torch(*_ROUNDINGS), "operator.floordiv"),
        methods=_with_inplace(*_ROUNDINGS),
        ops=_aten(*_with_inplace(*_ROUNDINGS)),
        description="one product per output element: floor, ceil, round, trunc, and a "
        "division that rounds (floor_divide)",
    ),
    OpSpec(
        "modulo",
        {"micronet": _FORMULAS + "modulo"},
        functions=("torch.fmod", "torch.remainder", "operator.mod"),
        methods=("fmod", "remainder", "fmod_", "remainder_"),
        ops=_aten("fmod", "remainder", "fmod_", "remainder_"),
        description="x - round(x / c) * c: 2 products (the rounding division, the product) "
        "and 1 add per output element",
    ),
    OpSpec(
        "pow",
        {"micronet": _FORMULAS + "power"},
        functions=("torch.pow", "torch.square", "torch.float_power", "operator.pow",
                   "operator.ipow"),
        methods=("pow", "pow_", "square", "square_", "float_power", "__rpow__"),
        ops=_aten("pow", "pow_", "square", "square_", "float_power"),
        description="per element: integer k >= 2 by square-and-multiply (x**2: 1, x**3: 2, "
        "x**4: 2), x**-k one reciprocal more, x**1 and x**0 free, x**0.5 and x**-0.5 one "
        "(sqrt, rsqrt); any other or a tensor exponent 3 (log, product, exp); 2**x: 2",
    ),
    OpSpec(
        "clamp",
        {"micronet": _FORMULAS + "clamp"},
        functions=("torch.clamp", "torch.clip", "torch.clamp_min", "torch.clamp_max"),
        methods=_with_inplace("clamp", "clip", "clamp_min", "clamp_max"),
        ops=_aten(*_with_inplace("clamp", "clip", "clamp_min", "clamp_max")),
        description="one comparison (a product) per output element for each bound given",
    ),
    OpSpec(
        "max_min",
        {"micronet": _FORMULAS + "max_min"},
        functions=_torch("max", "min", "maximum", "minimum", "fmax", "fmin", "amax", "amin",
                         "argmax", "argmin", "aminmax", "any", "all"),
        methods=("max", "min", "maximum", "minimum", "fmax", "fmin", "amax", "amin", "argmax",
                 "argmin", "any", "all"),
        ops=_aten("max", "min", "maximum", "minimum", "fmax", "fmin", "amax", "amin", "argmax",
                  "argmin", "aminmax", "any", "all"),
        description="between two tensors one comparison (a product) per output element; over "
        "dimensions n - 1 comparisons per output, counted as adds as in max pooling",
    ),
    OpSpec(
        "addcmul",
        {"micronet": _FORMULAS + "addcmul"},
        functions=("torch.addcmul", "torch.addcdiv"),
        methods=_with_inplace("addcmul", "addcdiv"),
        ops=_aten(*_with_inplace("addcmul", "addcdiv")),
        description="input + value * t1 * t2 (or / t2): per element 1 product (2 when value is "
        "not 1) and 1 add",
    ),
    OpSpec(
        "lerp",
        {"micronet": _FORMULAS + "lerp"},
        functions=("torch.lerp",),
        methods=_with_inplace("lerp"),
        ops=_aten(*_with_inplace("lerp")),
        description="start + w * (end - start): 1 product and 2 adds per element; a tensor "
        "weight 3 products and 3 adds (torch's choice of form per element)",
    ),
    OpSpec("prod", {"micronet": _FORMULAS + "product_reduction"}, functions=("torch.prod",),
           methods=("prod",), ops=_aten("prod"),
           description="n - 1 products per output of n values"),
    OpSpec(
        "cumsum",
        {"micronet": _FORMULAS + "cumulative"},
        functions=("torch.cumsum", "torch.cumprod"),
        methods=_with_inplace("cumsum", "cumprod"),
        ops=_aten(*_with_inplace("cumsum", "cumprod")),
        description="n - 1 adds (cumprod: products) along each line of n values",
    ),
    OpSpec(
        "variance",
        {"micronet": _FORMULAS + "variance"},
        functions=("torch.var", "torch.std", "torch.var_mean", "torch.std_mean"),
        methods=("var", "std"),
        ops=_aten("var", "std", "var_mean", "std_mean"),
        description="per output of n values: the mean, n centrings, n squares, their sum and "
        "a division (n + 2 products, 3n - 2 adds); std one sqrt more",
    ),
    OpSpec("logsumexp", {"micronet": _FORMULAS + "logsumexp"}, functions=("torch.logsumexp",),
           methods=("logsumexp",), ops=_aten("logsumexp"),
           description="per output of n values: n + 3 products and 3n - 1 adds (max, shift, "
           "exp, sum, log, shift back, and torch's guard against an infinite max)"),
    OpSpec(
        "vector_norm",
        {"micronet": _FORMULAS + "vector_norm"},
        functions=("torch.norm", "torch.linalg.vector_norm", "torch.linalg.norm",
                   "torch.functional.norm"),
        methods=("norm",),
        ops=_aten("linalg_vector_norm", "norm", "linalg_norm", "frobenius_norm"),
        attributes=("ord", "p", "dim"),
        description="p = 2: per output of n values n products, n - 1 adds and a sqrt; other p: "
        "|x| and x**p per element, x**(1/p) per output; p = inf: |x| and n - 1 comparisons",
    ),
    OpSpec(
        "normalize",
        {"micronet": _FORMULAS + "normalize"},
        functions=(F + "normalize",),
        description="the p-norm of each vector (as vector_norm), its clamp to eps and one "
        "division per element (p = 2: 2 products per element and per vector, n - 1 adds)",
    ),
    OpSpec(
        "interpolate",
        {"micronet": "micronet_score.ops.formulas_resample:interpolate"},
        modules=("torch.nn.Upsample",),
        functions=(F + "interpolate", F + "upsample", F + "upsample_bilinear",
                   F + "upsample_nearest"),
        ops=_aten("upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d",
                  "upsample_bicubic2d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa"),
        attributes=("mode", "align_corners", "scale_factor", "recompute_scale_factor",
                    "antialias", "scale_factors", "scales_h", "scales_w", "scales_d", "scales"),
        description="per output: nearest free; (bi/tri)linear 2**d - 1 interpolations "
        "a + w*(b - a) (1 product, 2 adds each); bicubic 20 products, 15 adds; area as an "
        "adaptive average pool; antialiased: one product per input value read, one add fewer",
    ),
    OpSpec(
        "fold",
        {"micronet": "micronet_score.ops.formulas_resample:fold"},
        modules=("torch.nn.Fold",),
        functions=(F + "fold",),
        ops=_aten("col2im"),
        attributes=("output_size", "kernel_size", "dilation", "padding", "stride"),
        description="sums the block values landing on each output: k - 1 adds for an output "
        "receiving k values",
    ),
    OpSpec(
        "instance_norm",
        {"micronet": "micronet_score.ops.formulas_norm:instance_norm"},
        modules=("torch.nn.modules.instancenorm._InstanceNorm",),
        functions=(F + "instance_norm", "torch.instance_norm"),
        ops=_aten("instance_norm"),
        traits=frozenset({T.SHAPE_PRESERVING}),
        attributes=("training", "track_running_stats", "use_input_stats", "eps"),
        description="as group_norm with one channel per group; with running statistics in eval "
        "mode a per-channel scale and shift, as an unfolded batch_norm",
    ),
    OpSpec(
        "rms_norm",
        {"micronet": "micronet_score.ops.formulas_norm:rms_norm"},
        modules=("torch.nn.RMSNorm",),
        functions=(F + "rms_norm", "torch.rms_norm"),
        ops=_aten("rms_norm"),
        traits=frozenset({T.SHAPE_PRESERVING}),
        attributes=("normalized_shape", "eps"),
        description="per element a square and a scaling (a weight one more product), the sum; "
        "per group a division, the eps add and an rsqrt",
    ),
    OpSpec(
        "local_response_norm",
        {"micronet": "micronet_score.ops.formulas_norm:local_response_norm"},
        modules=("torch.nn.LocalResponseNorm",),
        functions=(F + "local_response_norm",),
        traits=frozenset({T.SHAPE_PRESERVING}),
        attributes=("size", "alpha", "beta", "k"),
        description="per element a square, the window average over `size` channels, the scale, "
        "k, the power beta and a division: 4 + pow(beta) products, size adds",
    ),
    OpSpec(
        "glu",
        {"micronet": "micronet_score.ops.formulas_norm:glu"},
        modules=("torch.nn.GLU",),
        functions=(F + "glu",),
        ops=_aten("glu"),
        attributes=("dim",),
        description="a * sigmoid(b) on the two halves: per output the rule set's sigmoid cost "
        "and one product",
    ),
)

# Activation kinds: each needs a line in every rule file's `activations` table.
ACTIVATIONS: tuple[OpSpec, ...] = (
    _activation("mish", "5 products: exp, log1p, threshold comparison, tanh, product",
                modules=("torch.nn.Mish",), functions=(F + "mish",), ops=("mish", "mish_")),
    _activation("softplus", "3 products: exp, log1p, threshold comparison; beta != 1: 2 more",
                modules=("torch.nn.Softplus",), functions=(F + "softplus",),
                ops=("softplus",), formula="micronet_score.ops.formulas_norm:scaled_activation",
                attributes=("beta",)),
    _activation("selu", "4 products, 1 add: comparison, exp, exp - 1, two scales",
                modules=("torch.nn.SELU",), functions=(F + "selu", F + "selu_", "torch.selu",
                                                       "torch.selu_"),
                ops=("selu", "selu_")),
    _activation("celu", "2 products: comparison, expm1; alpha != 1: 2 more",
                modules=("torch.nn.CELU",), functions=(F + "celu", F + "celu_", "torch.celu",
                                                       "torch.celu_"),
                ops=("celu", "celu_"), formula="micronet_score.ops.formulas_norm:scaled_activation",
                attributes=("alpha",)),
    _activation("log_sigmoid", "4 products, 1 add: min(x, 0), |x|, exp, log1p; the difference",
                modules=("torch.nn.LogSigmoid",), functions=(F + "logsigmoid",),
                ops=("log_sigmoid", "log_sigmoid_forward")),
    _activation("softsign", "2 products, 1 add: |x|, the division; 1 + |x|",
                modules=("torch.nn.Softsign",), functions=(F + "softsign",)),
    _activation("tanhshrink", "1 product, 1 add: tanh; x - tanh(x)",
                modules=("torch.nn.Tanhshrink",), functions=(F + "tanhshrink",)),
    _activation("hardshrink", "2 products: |x|, comparison",
                modules=("torch.nn.Hardshrink",), functions=(F + "hardshrink",),
                methods=("hardshrink",), ops=("hardshrink",)),
    _activation("softshrink", "4 products, 1 add: |x|, comparison, sign, product; the shift",
                modules=("torch.nn.Softshrink",), functions=(F + "softshrink",),
                ops=("softshrink",)),
    _activation("threshold", "1 product: the comparison",
                modules=("torch.nn.Threshold",),
                functions=(F + "threshold", F + "threshold_", "torch.threshold",
                           "torch.threshold_"),
                ops=("threshold", "threshold_")),
    _activation("rrelu", "2 products, as leaky_relu: comparison, slope",
                modules=("torch.nn.RReLU",),
                functions=(F + "rrelu", F + "rrelu_", "torch.rrelu", "torch.rrelu_"),
                ops=("rrelu", "rrelu_", "rrelu_with_noise", "rrelu_with_noise_functional")),
    _activation("prelu", "2 products, as leaky_relu: comparison, slope; the slopes are stored",
                modules=("torch.nn.PReLU",), functions=(F + "prelu", "torch.prelu"),
                ops=("prelu", "_prelu_kernel"), formula="micronet_score.ops.formulas_norm:prelu"),
)

SPECS: tuple[OpSpec, ...] = (*_OTHERS, *ACTIVATIONS)
