"""int8 post-training static quantization, in FX graph mode and through torchao's PT2E flow.

Both paths share one recipe: activations observed with a histogram (quint8/uint8, per tensor),
weights with per-channel symmetric min/max (qint8), calibrated on a few training batches on the
CPU. A skip list keeps chosen modules float ("local" quantization), because some layers (the
DenseNet's early stages, its last transition) lose most accuracy when quantized and cost little.
A skip name covers the ops traced inside that module; ops in a parent's own ``forward`` (the
DenseNet's final ``F.avg_pool2d``) follow the global setting.

The two outputs reach the scorer differently:

* FX gives a ``GraphModule`` of real quantized modules with packed int8 weights. Only pickling
  the whole module keeps that, so the file needs ``torch.load(..., weights_only=False)``, the
  scorer's ``--trust``. torch's quantized convs cannot be pickled as they are (their
  ``__getstate__`` drops ``nn.Module``'s own state; pytorch/pytorch#25137), so `save_fx_quantized`
  pickles them through `rebuild_quantized_module`, which the loading process must be able to
  import from this package.
* PT2E gives a float graph with explicit quantize/dequantize ops and int8 weight constants,
  re-exported as an ``ExportedProgram``; ``torch.export.load`` reads it without running any
  code from the file, so the scorer loads it without ``--trust``.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.ao.quantization import (
    HistogramObserver,
    PerChannelMinMaxObserver,
    QConfig,
    QConfigMapping,
)
from torch.ao.quantization.fake_quantize import FakeQuantizeBase
from torch.ao.quantization.observer import ObserverBase
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
from torch.export import Dim, ExportedProgram

from micronet_score.compress.models import create_model
from micronet_score.errors import UserError

Backend = Literal["fbgemm", "x86"]

# A quantized linear's state_dict entries for its packed (weight, bias) pair and weight dtype.
_PACKED, _PACKED_DTYPE = "._packed_params._packed_params", "._packed_params.dtype"

# torch.ao's observer and fake-quantize bases; torchao's PT2E flow has its own, separate ones.
_TORCH_AO_OBSERVERS: tuple[type[nn.Module], ...] = (ObserverBase, FakeQuantizeBase)

# torch.ao.quantization warns on every use that it is deprecated in favour of torchao, and its
# observers that ``reduce_range`` will go; both still work and the FX path needs them.
_TORCH_AO_NOTICES = (
    "torch.ao.quantization is deprecated",
    "Please use quant_min and quant_max",
    "torch.quantize_per_tensor, torch.quantize_per_channel",
)


class QuantizationError(UserError):
    """Quantization cannot go on: no calibration data, an unknown skip name, or a model that
    still carries observers (prepared but not converted)."""


def calibration_inputs(
    batches: Iterable[Sequence[torch.Tensor]], num_batches: int
) -> list[torch.Tensor]:
    """The images of the first ``num_batches`` ``(images, labels)`` batches, e.g. of a loader."""
    inputs: list[torch.Tensor] = []
    for batch in batches:
        if len(inputs) == num_batches:
            break
        inputs.append(batch[0])
    return inputs


def fx_qconfig() -> QConfig:
    """Histogram activations, per-channel symmetric qint8 weights.

    ``reduce_range`` keeps activations to 7 bits: fbgemm's (and x86's) int8 kernels add pairs of
    u8*s8 products in 16 bits, which full-range activations can overflow on CPUs without VNNI.
    """
    return QConfig(  # type: ignore[no-untyped-call]
        activation=HistogramObserver.with_args(dtype=torch.quint8, reduce_range=True),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        ),
    )


def quantize_fx(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    *,
    skip: Sequence[str] = (),
    backend: Backend = "fbgemm",
) -> torch.fx.GraphModule:
    """A CPU int8 copy of ``model`` made with FX graph mode; ``model`` itself is not changed.

    Modules named in ``skip`` (and everything inside them) stay float. FX fuses conv-bn-relu,
    conv-relu and bn-relu patterns on its own before observing them.
    """
    batches = _calibration_list(calibration_batches)
    _check_skip(model, skip)
    mapping = QConfigMapping().set_global(fx_qconfig())
    for name in skip:
        mapping.set_module_name(name, None)
    float_model = copy.deepcopy(model).cpu().eval()
    with _quantized_engine(backend), _quiet_torch_ao():
        prepared = prepare_fx(float_model, mapping, example_inputs=(batches[0],))
        _calibrate(prepared, batches)
        return convert_fx(prepared)


def quantize_pt2e(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    *,
    skip: Sequence[str] = (),
) -> ExportedProgram:
    """A CPU int8 copy of ``model`` made with torchao's PT2E flow and ``X86InductorQuantizer``.

    Modules named in ``skip`` stay float. The converted graph is exported again, with the batch
    dimension free, so it can be saved with `save_pt2e` and run on any batch size.
    """
    # torchao is an optional dependency that takes seconds to import, so only this path loads it.
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    batches = _calibration_list(calibration_batches)
    _check_skip(model, skip)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    for name in skip:
        quantizer.set_module_name_qconfig(name, None)
    float_model = copy.deepcopy(model).cpu().eval()
    captured = torch.export.export(
        float_model, (batches[0],), dynamic_shapes=_batch_free(batches[0])
    ).module()
    _keep_shared_convs_unfolded(captured)
    prepared = prepare_pt2e(captured, quantizer)
    _calibrate(prepared, batches)
    converted = convert_pt2e(prepared)
    _drop_unread_tensors(converted)
    return export_converted(converted, (batches[0],))


def fx_quantized_model(
    model: str,
    skip: Sequence[str] = (),
    num_classes: int = 10,
    backend: Backend = "fbgemm",
    input_shape: Sequence[int] = (3, 32, 32),
    model_args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The structure `quantize_fx` gives the registered ``model`` (built with ``model_args``),
    for the scorer's ``--arch``.

    A pickled FX module loads only with ``weights_only=False`` (the scorer's ``--trust``), so a
    quantize stage saves `fx_state_dict` instead; this rebuilds the same graph (calibrated on
    zeros) and lets ``load_state_dict`` fill it with the saved scales, zero points and int8
    weights.
    """
    built = create_model(model, num_classes=num_classes, **(model_args or {})).eval()
    quantized = quantize_fx(built, [torch.zeros(1, *input_shape)], skip=skip, backend=backend)
    quantized.register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]
        _restore_absent_biases
    )
    return quantized


def fx_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A converted FX module's weights as a plain mapping of names to tensors, the form the
    scorer (and ``torch.load(weights_only=True)``) reads.

    It is the layout quantized modules load without state_dict version metadata, which a plain
    dict does not carry: a quantized linear's packed ``(weight, bias)`` as ``weight`` and
    ``bias``. Absent biases (None) are left out; `fx_quantized_model` puts them back.
    """
    return {key: value for key, value in _unversioned(module).items() if value is not None}


def _unversioned(module: nn.Module) -> dict[str, torch.Tensor | None]:
    layout: dict[str, torch.Tensor | None] = {}
    for key, value in module.state_dict().items():
        if key.endswith(_PACKED):
            owner = key.removesuffix(_PACKED)
            layout[f"{owner}.weight"], layout[f"{owner}.bias"] = value
        elif not key.endswith(_PACKED_DTYPE):  # qint8, what unversioned loading assumes
            layout[key] = value
    return layout


def _restore_absent_biases(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: object
) -> None:
    """Load-time inverse of `fx_state_dict`: the biases ``module`` lacks are None again."""
    for key, value in _unversioned(module).items():
        if value is None:
            state_dict.setdefault(prefix + key, None)


def export_converted(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> ExportedProgram:
    """Export a converted PT2E module (batch dimension free) so `save_pt2e` can write it.

    A module that still has observers is refused with `QuantizationError`: exporting it would
    fail deep inside the tracer, or save a model that is not quantized.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase as TorchaoFakeQuantize
    from torchao.quantization.pt2e.observer import ObserverBase as TorchaoObserver

    _refuse_observers(module, (*_TORCH_AO_OBSERVERS, TorchaoObserver, TorchaoFakeQuantize))
    return torch.export.export(
        module, example_inputs, dynamic_shapes=_batch_free(*example_inputs)
    )


def save_fx_quantized(module: torch.fx.GraphModule, path: str | Path) -> None:
    """Pickle a converted FX module whole, with `torch.save`.

    The scorer loads it with ``torch.load(path, weights_only=False)`` (its ``--trust``); that
    rebuilds the graph from torch's classes and `rebuild_quantized_module`, so the model's own
    source is not needed. A prepared module that was not converted is refused with
    `QuantizationError`.
    """
    _refuse_observers(module, _TORCH_AO_OBSERVERS)
    torch.save(module, path, pickle_module=_QuantizedPickle)


def save_pt2e(program: ExportedProgram, path: str | Path) -> None:
    """Write a program from `quantize_pt2e` or `export_converted` with `torch.export.save`.

    The scorer loads it with ``torch.export.load(path)``, which needs no ``--trust``.
    """
    torch.export.save(program, path)


def rebuild_quantized_module(cls: type[nn.Module], state: object) -> nn.Module:
    """Unpickle a module whose ``__getstate__`` returns only its own fields (quantized convs).

    Saved FX files name this function, so it must keep its name and place. It initialises the
    ``nn.Module`` part first, which plain unpickling skips for such classes.
    """
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.__setstate__(state)  # type: ignore[no-untyped-call]
    return module


class _QuantizedModulePickler(pickle.Pickler):
    """Routes modules with a non-dict state through `rebuild_quantized_module`.

    The reduction is a plain call, so each such module is complete before the GraphModule that
    holds it is rebuilt (and retraced) from its submodules.
    """

    def reducer_override(self, obj: object) -> Any:  # NotImplemented: pickle as usual
        if isinstance(obj, nn.Module):
            state = obj.__getstate__()  # type: ignore[no-untyped-call]
            if not isinstance(state, dict):
                return rebuild_quantized_module, (type(obj), state)
        return NotImplemented


class _QuantizedPickle:
    """The ``pickle_module`` torch.save is given: it only needs a ``Pickler`` (and a name)."""

    Pickler = _QuantizedModulePickler


def _calibration_list(batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    inputs = [batch.cpu() for batch in batches]
    if not inputs:
        raise QuantizationError("no calibration batches: give at least one batch of images")
    return inputs


def _check_skip(model: nn.Module, skip: Sequence[str]) -> None:
    """Refuse unknown names: both flows would silently quantize a misspelt module."""
    names = {name for name, _ in model.named_modules()}
    unknown = [name for name in skip if name not in names]
    if unknown:
        top = ", ".join(name for name, _ in model.named_children())
        raise QuantizationError(
            f"cannot skip {', '.join(unknown)}: no such module; top-level modules are: {top}"
        )


def _calibrate(prepared: nn.Module, batches: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for batch in batches:
            prepared(batch)


def _refuse_observers(module: nn.Module, observer_types: tuple[type[nn.Module], ...]) -> None:
    observed = [name for name, sub in module.named_modules() if isinstance(sub, observer_types)]
    if observed:
        raise QuantizationError(
            f"the model still has {len(observed)} observers (e.g. {observed[0]}): it was "
            "prepared but not converted; calibrate it and convert it before saving"
        )


def _drop_unread_tensors(module: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers the graph no longer reads.

    Conversion replaces each quantized weight by an int8 constant but leaves the float original
    on the module; exporting would store both, doubling the file and showing the scorer's users
    float weights the model never uses.
    """
    read = {str(node.target) for node in module.graph.nodes if node.op == "get_attr"}
    stored = [name for name, _ in (*module.named_parameters(), *module.named_buffers())]
    for name in stored:
        if name not in read:
            owner, _, attribute = name.rpartition(".")
            delattr(module.get_submodule(owner), attribute)


_BATCH_NORMS = (
    torch.ops.aten._native_batch_norm_legit_no_training.default,
    torch.ops.aten.batch_norm.default,
)


def _keep_shared_convs_unfolded(module: torch.fx.GraphModule) -> None:
    """Put a copy between a BatchNorm and its input when that input has other readers too.

    ``prepare_pt2e`` folds every BatchNorm into the conv before it, rewriting the conv's weights
    even when its raw output is read elsewhere: in a DenseNet the stem conv feeds the first
    layer's BatchNorm and the concatenation, which would then see the BatchNorm's output instead
    (torchao 0.18; accuracy falls to chance). The copy hides such pairs from the folding, so those
    BatchNorms stay separate ops, as in the float model.
    """
    for bn_node in list(module.graph.nodes):
        if bn_node.op != "call_function" or bn_node.target not in _BATCH_NORMS:
            continue
        source = bn_node.args[0]
        if len(source.users) < 2:
            continue  # a conv read by the BatchNorm alone folds correctly
        with module.graph.inserting_before(bn_node):
            copied = module.graph.call_function(torch.ops.aten.clone.default, (source,))
        bn_node.replace_input_with(source, copied)
    module.recompile()


def _batch_free(*inputs: torch.Tensor) -> tuple[dict[int, object], ...]:
    """Dynamic-shape spec leaving dim 0 of every input to export (static if it must be)."""
    return tuple({0: Dim.AUTO} for _ in inputs)


@contextlib.contextmanager
def _quantized_engine(backend: Backend) -> Iterator[None]:
    """Pack weights for ``backend`` without leaving the process-wide engine changed."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextlib.contextmanager
def _quiet_torch_ao() -> Iterator[None]:
    with warnings.catch_warnings():
        for notice in _TORCH_AO_NOTICES:
            warnings.filterwarnings("ignore", message=notice)
        yield
