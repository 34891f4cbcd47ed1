"""Scoring never runs the model's hooks and leaves the model exactly as it was.

Every module gets hooks of every kind, each recording its call and storing what it was given on
its module (a feature-extraction hook that, run by a tracer, would leave a Proxy behind and break
`torch.save`). After scoring, no hook has run and every module's attributes, hook dicts, training
flags, parameters and buffers (bit for bit) are as they were, for the three ways a model is
traced: symbolic tracing, the torch.export fallback, and an FX-quantized graph module.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import QConfigMapping, get_default_qat_qconfig, get_default_qconfig
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrizations, parametrize, prune

from micronet_score import UserError, score_model
from micronet_score.report import Report

CALLS: list[str] = []


def record(tag: str, module: nn.Module, *rest: object) -> None:
    """A hook of any kind: note the call, and keep the last argument on the module."""
    CALLS.append(tag)
    if isinstance(module, nn.Module):
        module.__setattr__("captured", rest[-1] if rest else None)


def note(tag: str, *args: object) -> None:
    """A registration hook (one that stored what it got would register it again)."""
    CALLS.append(tag)


class Observed(nn.Module):
    """Notes every attribute set or deleted after construction."""

    def __setattr__(self, name: str, value: object) -> None:
        if self.__dict__.get("built"):
            CALLS.append(f"setattr {name}")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        CALLS.append(f"delattr {name}")
        super().__delattr__(name)


class Block(Observed):
    """Traced through. Its forward updates a buffer in training mode, and makes a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)  # a layer the counter runs (on fakes)
        self.instance_norm = nn.InstanceNorm2d(4, track_running_stats=True)  # another
        self.register_buffer("seen", torch.zeros(()))
        self.scale = torch.full((4, 1, 1), 0.5)  # a plain tensor attribute
        self.built = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.add_(1)
        y = self.instance_norm(self.pool(F.relu(self.bn(self.conv(x)))))
        return y * self.scale + torch.full((4, 1, 1), 0.25)


class Mask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", (torch.arange(16).reshape(4, 4) % 3 != 0).float())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


class Net(Observed):
    """Traced through (Block), parametrized (mix), pruned (head), spectral norm (norm: its power
    iteration updates buffers in training mode); `branch` adds shape-dependent control flow,
    which symbolic tracing cannot follow."""

    def __init__(self, branch: bool = False, parametrized: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = Block()
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(64, 3)
        prune.l1_unstructured(self.head, "weight", amount=0.5)
        self.norm = nn.Linear(3, 3)
        if parametrized:  # (torch.save refuses parametrized modules)
            parametrize.register_parametrization(self.mix, "weight", Mask())
            parametrizations.spectral_norm(self.norm)
        self.branch = branch
        self.built = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.branch and y.shape[-1] < 16:
            y = y * 2
        y = self.mix(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(self.head(y.flatten(1)))


def add_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        def hook(kind: str, where: str = name or "root") -> Callable[..., None]:
            return functools.partial(record, f"{where} {kind}")

        module.register_forward_pre_hook(hook("pre"))
        module.register_forward_pre_hook(hook("pre kwargs"), with_kwargs=True)
        module.register_forward_hook(hook("forward"))
        module.register_forward_hook(hook("forward kwargs"), with_kwargs=True)
        module.register_forward_hook(hook("forward always"), always_call=True)
        module.register_full_backward_pre_hook(hook("backward pre"))
        module.register_full_backward_hook(hook("backward"))
        module.register_state_dict_pre_hook(hook("state_dict pre"))
        module.register_state_dict_post_hook(hook("state_dict post"))
        module.register_load_state_dict_pre_hook(hook("load_state_dict pre"))
        module.register_load_state_dict_post_hook(hook("load_state_dict post"))


@pytest.fixture
def global_hooks() -> Iterator[None]:
    """Hooks registered for every module; removed afterwards."""
    handles = [
        torch_module.register_module_forward_pre_hook(functools.partial(record, "global pre")),
        torch_module.register_module_forward_hook(functools.partial(record, "global forward")),
        torch_module.register_module_forward_hook(
            functools.partial(record, "global always"), always_call=True
        ),
        torch_module.register_module_full_backward_hook(functools.partial(record, "global bw")),
        torch_module.register_module_buffer_registration_hook(
            functools.partial(note, "global buffer registration")
        ),
        torch_module.register_module_parameter_registration_hook(
            functools.partial(note, "global parameter registration")
        ),
        torch_module.register_module_module_registration_hook(
            functools.partial(note, "global module registration")
        ),
    ]
    yield
    for handle in handles:
        handle.remove()


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    CALLS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao quantization's deprecation, on every call
        yield


def _frozen(value: object) -> object:
    """What must not change about one attribute value: identity, and for containers the
    identity of each item; tensors' bits; plain values themselves."""
    if isinstance(value, torch.Tensor):
        return _tensor_state(value)
    if isinstance(value, dict):
        return type(value), [(key, id(item)) for key, item in value.items()]
    if isinstance(value, list | tuple):
        return type(value), [id(item) for item in value]
    if isinstance(value, set | frozenset):
        return type(value), sorted(map(repr, value))
    if value is None or isinstance(value, bool | int | float | str | torch.dtype):
        return value
    return "object"


def _tensor_state(tensor: torch.Tensor) -> object:
    data = tensor.detach()
    if data.is_quantized:
        data = data.int_repr()
    bits = data.clone().contiguous().reshape(-1).view(torch.uint8)
    return (
        type(tensor), tensor.dtype, tuple(tensor.shape), tensor.requires_grad, tensor._version,
        tensor.grad is None, bits, sorted(vars(tensor)),
    )


def snapshot(model: nn.Module) -> list[object]:
    state: list[object] = []
    for name, module in model.named_modules(remove_duplicate=False):
        state.append((name, id(module), type(module), list(vars(module))))
        state.extend((name, key, id(value), _frozen(value)) for key, value in vars(module).items())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        state.append((name, id(tensor), _tensor_state(tensor)))
    for table in (
        torch_module._global_forward_pre_hooks, torch_module._global_forward_hooks,
        torch_module._global_backward_hooks, torch_module._global_buffer_registration_hooks,
    ):
        state.append(list(table.items()))
    return state


def assert_same(before: list[object], after: list[object]) -> None:
    assert len(before) == len(after)
    for was, now in zip(before, after, strict=True):
        assert _equal(was, now), (was, now)


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and torch.equal(a, b)
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return bool(a == b)


def score_untouched(model: nn.Module, shape: tuple[int, ...]) -> Report:
    """Score `model`, asserting that no hook ran and nothing changed."""
    CALLS.clear()  # building the model set attributes
    saves = _saves(model)  # torch refuses parametrized modules and prepared QAT ones
    before = snapshot(model)  # (saving a graph module regenerates its code: first)
    report = score_model(model, input_shape=shape)
    assert CALLS == []
    assert_same(before, snapshot(model))
    assert _saves(model) == saves
    return report


def _saves(model: nn.Module) -> bool:
    try:
        torch.save(model, io.BytesIO())
    except (RuntimeError, AttributeError):
        return False
    return True


def rows(report: Report) -> list[tuple[object, ...]]:
    return [(r.name, r.op, r.mults, r.adds, r.storage_bits) for r in report.layers]


@pytest.mark.parametrize("parametrized", [False, True], ids=["plain", "parametrized"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "training"])
@pytest.mark.parametrize("branch", [False, True], ids=["symbolic", "export"])
def test_no_hook_runs_and_nothing_changes(branch: bool, training: bool, parametrized: bool) -> None:
    plain = Net(branch, parametrized).train(training)
    model = Net(branch, parametrized).train(training)
    add_hooks(model)
    report = score_untouched(model, (2, 4, 4))
    assert _saves(model) is not parametrized
    assert (
        "hooks were not run (module 'Net' has the forward pre-hook 'record'): what they add is "
        "not counted"
    ) in report.warnings
    assert report.trace_method == ("torch.export" if branch else "symbolic_trace")
    assert rows(report) == rows(score_model(plain, input_shape=(2, 4, 4)))
    # conv 36 weights x 64 + 64 biases (bn folded in); 2/3 of mix's 16 weights kept by the mask,
    # half of head's 192 pruned, norm's 9: the same either way the model is traced.
    assert [(r.name, r.mults) for r in report.layers if r.op in ("conv", "linear")] == [
        ("block.conv", 1152), ("mix", 256 if branch or not parametrized else 160), ("head", 96),
        ("norm", 9),
    ]


def test_global_hooks_do_not_run_when_tracing_symbolically(global_hooks: None) -> None:
    model = Net().train()
    add_hooks(model)
    assert score_untouched(model, (2, 4, 4)).trace_method == "symbolic_trace"


def test_export_fallback_refuses_to_run_global_hooks(global_hooks: None) -> None:
    model = Net(branch=True)
    CALLS.clear()
    before = snapshot(model)
    with pytest.raises(UserError, match="without running the global forward pre-hook 'record'"):
        score_model(model, input_shape=(2, 4, 4))
    assert CALLS == []
    assert_same(before, snapshot(model))


class Unregistered(nn.Module):
    """Keeps a layer in a list, not a ModuleList: outside the module tree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.activations = [nn.ReLU()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations[0](self.conv(x))


def test_hooks_of_a_layer_outside_the_module_tree_do_not_run() -> None:
    model = Unregistered()
    add_hooks(model)
    add_hooks(model.activations[0])
    report = score_untouched(model, (2, 4, 4))
    assert report.trace_method == "torch.export"  # symbolic tracing cannot name the layer
    assert [(r.op, r.mults) for r in report.layers] == [("conv", 96), ("relu", 48)]


def flatten(module: nn.Module, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    return (inputs[0].flatten(1),)


def test_a_model_that_needs_its_hooks_is_refused_naming_the_hook() -> None:
    model = nn.Sequential(nn.Linear(8, 2))
    model.register_forward_pre_hook(flatten)
    with pytest.raises(UserError) as error:
        score_model(model, input_shape=(2, 4))
    message = str(error.value)
    assert message.startswith("the model does not run on the given input shape: node '_0'")
    assert message.endswith(
        "note that scoring does not run hooks, and module 'Sequential' has the forward "
        "pre-hook 'flatten'"
    )
    assert "\n" not in message


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.linear = nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.relu(self.bn(self.conv(x))).flatten(1))


def fx_converted() -> nn.Module:
    torch.manual_seed(0)
    example = torch.rand(4, 2, 4, 4)
    mapping = QConfigMapping().set_global(get_default_qconfig("x86"))
    prepared = prepare_fx(Tiny().eval(), mapping, (example,))
    prepared(example)
    return convert_fx(prepared)


def fx_prepared_for_training() -> nn.Module:
    """Fake-quantized, in training mode: running it would update observers and BatchNorm."""
    torch.manual_seed(0)
    example = torch.rand(4, 2, 4, 4)
    mapping = QConfigMapping().set_global(get_default_qat_qconfig("x86"))
    prepared = prepare_qat_fx(Tiny().train(), mapping, (example,))
    prepared(example)
    return prepared


@pytest.mark.parametrize(
    ("build", "linear_mults"), [(fx_converted, 95), (fx_prepared_for_training, 96)]
)
def test_fx_quantized_models_run_no_hook_and_keep_their_state(
    build: Callable[[], nn.Module], linear_mults: int, global_hooks: None
) -> None:
    model, plain = build(), build()
    add_hooks(model)
    report = score_untouched(model, (2, 4, 4))
    assert rows(report) == rows(score_model(plain, input_shape=(2, 4, 4)))
    # conv: 48 outputs x 18 products, and its fused relu; converting rounds a weight of linear
    # to 0
    assert [(r.name, r.mults) for r in report.layers if r.op in ("conv", "linear")] == [
        ("conv", 864 + 48), ("linear", linear_mults),
    ]


def test_torchs_own_hooks_are_not_reported_as_skipped() -> None:
    """`ExportedProgram.module()` adds an input-checking pre-hook of torch's own; a skipped-hook
    warning for it would appear on every .pt2 and drown the ones that matter."""
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    program = torch.export.export(model, (torch.zeros(1, 3, 4, 4),))
    module = program.module()
    assert any(module._forward_pre_hooks.values())  # the hook is there
    assert score_model(program).warnings == ()
    user = nn.Sequential(nn.Conv2d(3, 2, 1))
    user.register_forward_hook(lambda m, i, o: None)
    assert any("hooks were not run" in w for w in score_model(user, input_shape=(3, 4, 4)).warnings)
