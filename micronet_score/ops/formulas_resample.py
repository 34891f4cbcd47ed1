"""Formulas of resampling: interpolation, fold (col2im) and index_put, with the conventions of
`formulas_extra`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from micronet_score.ops.cost import FormulaContext, NodeCost

if TYPE_CHECKING:
    from micronet_score.facts import NodeFacts
from micronet_score.ops.formulas_extra import (
    _argument,
    _elementwise,
    _number,
    _op_name,
    _out,
    antialias_taps,
    fold_counts,
    interpolation_counts,
    resize_scale,
)


def _mode(facts: NodeFacts) -> tuple[str, bool]:
    """(mode, antialias) of a resampling node: from its arguments, or from the aten op's name."""
    name = _op_name(facts)
    if name.startswith(("upsample_", "_upsample_")):
        antialias = name.endswith("_aa")
        core = name.removeprefix("_").removeprefix("upsample_").removesuffix("_aa")
        mode = core.rstrip("123d")
        return ("nearest-exact" if mode == "nearest_exact" else mode), antialias
    if name == "upsample_bilinear":
        return "bilinear", False
    if name == "upsample_nearest":
        return "nearest", False
    mode = str(_argument(facts, ("mode",), 3, "nearest"))
    return mode, bool(_argument(facts, ("antialias",), 6, False))


def _scales(facts: NodeFacts, spatial: int) -> list[float | None]:
    """Scale factors the caller gave per spatial dimension (None: from the sizes)."""
    given = _argument(facts, ("scale_factor", "scale_factors"), None)
    if _argument(facts, ("recompute_scale_factor",), 5):
        return [None] * spatial  # the kernel then sees sizes only
    if given is None:
        names = ("scales_d", "scales_h", "scales_w")[3 - spatial:] if spatial > 1 else ("scales",)
        found = [_number(_argument(facts, (name,), None)) for name in names]
        return found if len(found) == spatial else [None] * spatial
    if isinstance(given, list | tuple):
        return [_number(v) for v in given]
    return [_number(given)] * spatial


def interpolate(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """Per output element, `interpolation_counts` for the mode; "area" is an adaptive average
    pool (its exact windows). Antialiased bilinear / bicubic resample one dimension at a time
    (last first, a dimension of unchanged size skipped), each output reading `antialias_taps`
    values: one product per value read and one add fewer per output. Returns None for an
    unknown mode."""
    assert facts.output is not None
    in_shape, out_shape = facts.inputs[0].shape, facts.output.shape
    spatial = len(out_shape) - 2
    mode, antialias = _mode(facts)
    if mode == "area":
        return adaptive_average(in_shape, out_shape, ctx)
    if antialias and mode in ("bilinear", "bicubic"):
        return _antialiased(facts, mode, ctx)
    try:
        mults, adds = interpolation_counts(mode, spatial)
    except ValueError:
        return None
    elements = _out(facts)
    return _elementwise(mults * elements, adds * elements, ctx)


def _antialiased(facts: NodeFacts, mode: str, ctx: FormulaContext) -> NodeCost:
    assert facts.output is not None
    shape = list(facts.inputs[0].shape)
    out_shape = facts.output.shape
    spatial = len(out_shape) - 2
    align_corners = bool(_argument(facts, ("align_corners",), 4, False))
    scales = _scales(facts, spatial)
    interp_size = 2 if mode == "bilinear" else 4
    mults = adds = 0
    for axis in reversed(range(spatial)):
        dim = axis + 2
        size_in, size_out = shape[dim], out_shape[dim]
        if size_in == size_out:
            continue
        scale = resize_scale(size_in, size_out, align_corners, scales[axis])
        taps = antialias_taps(size_in, size_out, scale, interp_size)
        shape[dim] = size_out
        lines = math.prod(shape) // size_out  # every other dimension, at its current size
        mults += taps * lines
        adds += (taps - size_out) * lines
    return _elementwise(mults, adds, ctx)


def adaptive_average(in_shape: Sequence[int], out_shape: Sequence[int],
                     ctx: FormulaContext) -> NodeCost:
    """Adaptive average pooling: per output, its window's size - 1 adds and one division."""
    spatial = len(out_shape) - 2
    planes = math.prod(out_shape[:2])
    covered = planes * math.prod(
        sum(-(-(j + 1) * size_in // size_out) - (j * size_in // size_out)
            for j in range(size_out))
        for size_in, size_out in zip(in_shape[-spatial:], out_shape[-spatial:], strict=True)
    )
    outputs = math.prod(out_shape)
    return _elementwise(outputs, covered - outputs, ctx)


def _broadcast(shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The shape tensors of `shapes` broadcast to (numpy rules)."""
    rank = max((len(shape) for shape in shapes), default=0)
    padded = [(1,) * (rank - len(shape)) + tuple(shape) for shape in shapes]
    return tuple(max(sizes) if sizes else 1 for sizes in zip(*padded, strict=True))


def _pair(value: object) -> tuple[int, int] | None:
    """Two ints from an int or a pair of ints; None for anything else (e.g. a size computed in
    the graph, which a symbolic trace records as a node)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, list | tuple) and len(value) == 2 and all(
            isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def fold(facts: NodeFacts, ctx: FormulaContext) -> NodeCost | None:
    """nn.Fold / col2im sums the block values landing on each output: `fold_counts` adds. The
    output size is read from the output; None when a block setting is not a number."""
    assert facts.output is not None
    out_shape = facts.output.shape
    settings = [_pair(_argument(facts, (name,), position, default)) for name, position, default
                in (("kernel_size", 2, None), ("dilation", 3, 1), ("padding", 4, 0),
                    ("stride", 5, 1))]
    kernel, dilation, padding, stride = settings
    if kernel is None or dilation is None or padding is None or stride is None:
        return None
    channels = math.prod(out_shape[:-2])
    _, adds = fold_counts(channels, out_shape[-2:], kernel, dilation, padding, stride)
    return _elementwise(0, adds, ctx)


def index_put(facts: NodeFacts, ctx: FormulaContext) -> NodeCost:
    """Writing values at indices is free; with accumulate=True each value is added to its
    destination: one add per value (core-ATen spells nn.Fold this way)."""
    if not _argument(facts, ("accumulate",), 3, False):
        return _elementwise(0, 0, ctx)
    indices = _argument(facts, ("indices",), 1, ())
    assert isinstance(indices, list | tuple)
    given = [i for i in indices if i is not None]
    index_shapes = [info.shape for info in facts.inputs[1:1 + len(given)]]
    target = facts.inputs[0].shape
    written = math.prod(_broadcast(index_shapes)) * math.prod(
        target[len(indices):])
    return _elementwise(0, written, ctx)


# ---------------------------------------------------------------- normalizations
