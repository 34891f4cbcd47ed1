"""Whether the input shape and baseline fit the model: warnings that catch a model scored at an
input or against a baseline it was not built for, and the fixed shapes of exported programs.

A model traced at a size it was not built for still counts, so a wrong first run is silent: an
ImageNet model at 3x32x32 scores tiny against the CIFAR-100 baseline. The signs read here are
the ones the counted graph shows: the feature map its last global pooling sees, the number of
outputs of its classifier, and the baseline's own data set and input shape.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
import torch.fx
from torch import nn

from micronet_score.count import Counts
from micronet_score.errors import UserError
from micronet_score.ledger import CountedNode
from micronet_score.opkinds import OpKind, activation_kinds
from micronet_score.rules import (
    Baseline,
    available_baselines,
    available_rules,
    load_baseline,
    load_rules,
)

# Classes per data set, for the data sets baselines name (normalized: lower case, letters and
# digits only). CIFAR-10/100 and ImageNet-1k (ILSVRC 2012) by their definitions.
_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "imagenet1k": 1000,
            "ilsvrc2012": 1000}
# A global pooling over a 1x1 map after this much downsampling means the input is too small for
# the model: ImageNet models reduce 224x224 by 32 to a 7x7 map, and 32x32 to 1x1.
_DOWNSAMPLING = 32
_GLOBAL_POOLS = (OpKind.ADAPTIVE_AVG_POOL, OpKind.ADAPTIVE_MAX_POOL)
# Kinds a classifier's outputs may pass through on their way to the model's output.
_AFTER_CLASSIFIER = {
    OpKind.QUANTIZE, OpKind.BATCH_NORM, OpKind.MEAN, OpKind.AVG_POOL, OpKind.MAX_POOL,
    *_GLOBAL_POOLS,
}


def fit_warnings(counts: Counts, baseline: Baseline) -> tuple[str, ...]:
    """Warnings (one line each) when the model looks built for another input or data set than
    the input shape (`counts.input_shape`, no batch) and the baseline it was scored with.

    Under rule sets that do not count pooling (imt-*), the pooling sign is not seen.
    """
    found = [_small_feature_map(counts, baseline), _classes(counts, baseline),
             _shape_differs(counts.input_shape, baseline)]
    return tuple(w for w in found if w is not None)


def _small_feature_map(counts: Counts, baseline: Baseline) -> str | None:
    """The feature map entering the last global pooling is 1x1 although the input is at least
    32 wide in every spatial dim: the model downsamples 32x or more, as ImageNet models do."""
    shape = counts.input_shape
    pooled = [(c, spatial) for c in counts.nodes
              if (spatial := _map_pooled(c, len(shape) + 1)) is not None]
    if len(shape) < 2 or not pooled:
        return None
    last, spatial = pooled[-1]
    if any(s != 1 for s in spatial) or min(shape[1:]) < _DOWNSAMPLING:
        return None
    where = last.facts.module or last.facts.node.name
    bigger = _larger_baselines(shape)
    if bigger:
        size, names = bigger
        flags = f"--input-shape {','.join(map(str, size))}"
        if baseline.name not in names:
            flags += f" --baseline {' or '.join(names)}"
    else:
        flags = f"--input-shape {shape[0]},{','.join('224' for _ in shape[1:])}"
    return (
        f"the feature map entering the last global pooling ({where}) is "
        f"{_shape(spatial)} at input {_shape(shape)}: the model looks built for larger inputs; "
        f"score it at its own size, e.g. {flags}"
    )


def _map_pooled(counted: CountedNode, rank: int) -> tuple[int, ...] | None:
    """The spatial size a global pooling (adaptive pool, or a mean over every spatial dim) reads,
    for an input of `rank` dims (batch, channels, spatial...); None for other nodes."""
    facts = counted.facts
    if not facts.inputs or facts.output is None or len(facts.inputs[0].shape) != rank:
        return None
    source, result = facts.inputs[0].shape, facts.output.shape
    if facts.kind in _GLOBAL_POOLS:
        return source[2:]
    keeps_channels = result[:2] == source[:2] and facts.output.numel == source[0] * source[1]
    if facts.kind == OpKind.MEAN and keeps_channels:
        return source[2:]
    return None


def _classes(counts: Counts, baseline: Baseline) -> str | None:
    """The classifier's output size against the classes of the baseline's data set."""
    expected = classes_of(baseline.dataset)
    classifier = _classifier(counts)
    if expected is None or classifier is None:
        return None
    counted, outputs = classifier
    if outputs == expected:
        return None
    where = counted.facts.module or counted.facts.node.name
    others = _baselines_with(outputs)
    hint = (f"a baseline for {outputs} classes may fit better: {', '.join(others)}"
            if others else "check --baseline ('micronet-score rules' lists them)")
    return (
        f"the classifier ({where}) gives {outputs} outputs, while baseline '{baseline.name}' is "
        f"for {baseline.dataset} ({expected} classes); if the model is for another data set, "
        f"{hint}"
    )


def _classifier(counts: Counts) -> tuple[CountedNode, int] | None:
    """The linear (or 1x1-output conv) layer the model's first output comes from, through
    activations, reshapes and pooling only, and its number of outputs."""
    if not counts.nodes:
        return None
    by_node = {c.facts.node: c for c in counts.nodes}
    graph = counts.nodes[0].facts.node.graph
    node = next((n for n in reversed(graph.nodes) if n.op == "output"), None)
    for _ in range(len(graph.nodes)):
        if node is None:
            return None
        sources = [n for n in node.all_input_nodes if n.op not in ("get_attr", "placeholder")]
        if len(sources) != 1:
            return None
        node = sources[0]
        counted = by_node.get(node)
        if counted is None:
            continue  # a reshape, dropout or other free node
        kind, output = counted.facts.kind, counted.facts.output
        if kind in (OpKind.LINEAR, OpKind.CONV) and output is not None and len(output.shape) > 1:
            outputs = output.shape[-1] if kind == OpKind.LINEAR else output.shape[1]
            return (counted, outputs) if output.numel == outputs else None
        if kind not in _AFTER_CLASSIFIER and kind not in activation_kinds():
            return None
    return None


def _shape_differs(shape: tuple[int, ...], baseline: Baseline) -> str | None:
    if baseline.input_shape is None or tuple(baseline.input_shape) == tuple(shape):
        return None
    return (
        f"the model was scored at input {_shape(shape)}, baseline '{baseline.name}' at "
        f"{_shape(baseline.input_shape)}: the score compares costs at different input sizes"
    )


def classes_of(dataset: str) -> int | None:
    """The number of classes of a data set named by a baseline (None when not known)."""
    return _CLASSES.get(re.sub(r"[^a-z0-9]", "", dataset.lower()))


def _bundled() -> list[Baseline]:
    try:
        return [load_baseline(name) for name in available_baselines()]
    except UserError:  # a broken bundled file is reported where it is loaded, not here
        return []


def _larger_baselines(shape: tuple[int, ...]) -> tuple[tuple[int, ...], list[str]] | None:
    """The smallest bundled input size larger than `shape` in every spatial dim (same channels),
    and the baselines measured at it."""
    bundled = [b for b in _bundled() if b.input_shape is not None]
    sizes = sorted({
        b.input_shape for b in bundled
        if b.input_shape is not None and len(b.input_shape) == len(shape)
        and b.input_shape[0] == shape[0]
        and all(big > small for big, small in zip(b.input_shape[1:], shape[1:], strict=True))
    })
    if not sizes:
        return None
    return sizes[0], [b.name for b in bundled if b.input_shape == sizes[0]]


def _baselines_with(classes: int) -> list[str]:
    """Bundled baselines for a data set of `classes` classes, each with the rule set whose own
    baseline it is, if any."""
    try:
        owners = {r.default_baseline: r.name for r in map(load_rules, available_rules())}
    except UserError:
        owners = {}
    return [
        f"{b.name} (with --rules {owners[b.name]})" if b.name in owners else b.name
        for b in _bundled() if classes_of(b.dataset) == classes
    ]


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


@contextlib.contextmanager
def fixed_shape_explained(model: nn.Module, shape: tuple[int, ...]) -> Iterator[None]:
    """Turn a failure to run an exported program at `shape` (no batch; run at batch 1) into one
    line naming the fixed shape it was exported at, when that is the cause: torch.export
    specializes every size not declared dynamic, and the program's guards refuse other sizes.

    Raises UserError; other errors pass unchanged.
    """
    try:
        yield
    except UserError as error:
        exported = _exported_input(model)
        if exported is None:
            raise
        name, sizes = exported
        wanted = (1, *shape)
        if len(sizes) != len(wanted):
            raise
        wrong = [i for i, (size, want) in enumerate(zip(sizes, wanted, strict=True))
                 if isinstance(size, int) and size != want]  # a dynamic size takes any
        if not wrong:
            raise
        raise UserError(_fixed_shape_advice(name, sizes, wanted, wrong)) from error


def _exported_input(model: nn.Module) -> tuple[str, tuple[int | torch.SymInt, ...]] | None:
    """The first input's name and sizes (batch included), as recorded by torch.export on the
    placeholder; a size declared dynamic is a SymInt. None for a model not from an export."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    for node in model.graph.nodes:
        if node.op == "placeholder":
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor):
                return str(node.target), tuple(value.shape)
            return None
    return None


def _fixed_shape_advice(name: str, sizes: tuple[int | torch.SymInt, ...],
                        wanted: tuple[int, ...], wrong: list[int]) -> str:
    traced = _shape(tuple(s if isinstance(s, int) else int(s.node.hint or 0) for s in sizes))
    dims = ", ".join(f"{i}: torch.export.Dim('{_dim_name(i, len(sizes))}')" for i in wrong)
    dynamic = f"torch.export.export(model, ({name},), dynamic_shapes={{'{name}': {{{dims}}}}})"
    if wrong == [0]:
        return (f"the program was exported at a fixed batch size of {sizes[0]} (input {traced}) "
                f"and is scored at batch size 1; export it with a batch of 1, or with {dynamic}")
    return (f"the program was exported at a fixed input shape {traced.partition('x')[2]} and "
            f"cannot run at {_shape(wanted[1:])}; omit --input-shape to score it at its own "
            f"shape, or export it with dynamic sizes: {dynamic}")


def _dim_name(index: int, rank: int) -> str:
    if index == 0:
        return "batch"
    if rank == 4 and index in (2, 3):
        return ("height", "width")[index - 2]
    return f"dim{index}"


def check_size_ranges(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Refuse a `shape` (no batch) outside the sizes an exported program was exported for: its
    graph is valid only there (torch's own guards refuse other sizes), so a count outside would
    be of a program that does not exist. Raises UserError naming the dimension and its range."""
    from micronet_score.loading import SIZE_RANGES

    meta = getattr(model, "meta", None)
    ranges = meta.get(SIZE_RANGES) if isinstance(meta, dict) else None
    if not ranges or len(ranges) != len(shape):
        return
    for dim, (size, (low, high)) in enumerate(zip(shape, ranges, strict=True), start=1):
        if low == high and size != low:
            return  # a fixed size: fixed_shape_explained says it better, with the export recipe
        if size < low or (high is not None and size > high):
            allowed = f"{low} to {high}" if high is not None else f"{low} or more"
            raise UserError(
                f"input shape {_shape(shape)}: dimension {dim} is {size}, but the program was "
                f"exported for sizes {allowed} there; score it inside that range, or export it "
                "again with a wider torch.export.Dim(min=..., max=...)"
            )
