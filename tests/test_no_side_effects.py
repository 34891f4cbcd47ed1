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
import pickle
import types
import warnings
import weakref
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import QConfigMapping, get_default_qat_qconfig, get_default_qconfig
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrizations, parametrize, prune

from micronet_score import UserError, score_model
from micronet_score.results import Report

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


def _frozen(value: object, depth: int = 0) -> object:
    """What must not change about one attribute value: identity, and for containers the
    identity and state of each item (a few levels deep); tensors' bits; plain values themselves."""
    if isinstance(value, torch.Tensor):
        return _tensor_state(value)
    if isinstance(value, dict) and depth < 3:
        return type(value), [(k, id(v), _frozen(v, depth + 1)) for k, v in value.items()]
    if isinstance(value, list | tuple) and depth < 3:
        return type(value), [(id(item), _frozen(item, depth + 1)) for item in value]
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


def score_untouched(model: nn.Module, shape: tuple[int, ...], *others: nn.Module) -> Report:
    """Score `model`, asserting that no hook ran and nothing changed, in it or in `others`
    (modules it holds outside its module tree)."""
    CALLS.clear()  # building the model set attributes
    saves = _saves(model)  # torch refuses parametrized modules and prepared QAT ones
    before = [snapshot(m) for m in (model, *others)]  # (saving a graph module regenerates its
    report = score_model(model, input_shape=shape)  # code: first)
    assert CALLS == []
    for was, module in zip(before, (model, *others), strict=True):
        assert_same(was, snapshot(module))
    assert _saves(model) == saves
    return report


def refused_untouched(model: nn.Module, shape: tuple[int, ...], *others: nn.Module) -> str:
    """Score `model`, asserting that it is refused and that no hook ran and nothing changed;
    the one-line message."""
    CALLS.clear()
    before = [snapshot(m) for m in (model, *others)]
    with pytest.raises(UserError) as error:
        score_model(model, input_shape=shape)
    assert CALLS == []
    for was, module in zip(before, (model, *others), strict=True):
        assert_same(was, snapshot(module))
    assert "\n" not in str(error.value)
    return str(error.value)


def _saves(model: nn.Module) -> bool:
    try:
        torch.save(model, io.BytesIO())
    except (RuntimeError, AttributeError, TypeError, pickle.PicklingError):
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
    assert score_model(program).warnings == (  # only the input size's, none about hooks
        "the model was scored at input 3x4x4, baseline 'wrn' at 3x32x32: the score compares "
        "costs at different input sizes",
    )
    user = nn.Sequential(nn.Conv2d(3, 2, 1))
    user.register_forward_hook(lambda m, i, o: None)
    assert any("hooks were not run" in w for w in score_model(user, input_shape=(3, 4, 4)).warnings)


class Outside(nn.Module):
    """A block a model holds outside its module tree. Its forward counts its calls and keeps
    its input, as a real forward that caches would: run on the real module, both stay."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.last = x
        return F.relu(self.linear(x))


class Holding(Observed):
    """Holds `held` (built around an Outside block) in a plain attribute; `reach` finds the
    block (or a callable that runs it) in it."""

    def __init__(self, held: object, reach: Callable[[object], Callable[..., torch.Tensor]]):
        super().__init__()
        self.held = held
        self.reach = reach
        self.built = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reach(self.held)(x)


def run_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block(x)


def first(held: Any) -> Any:
    return next(iter(held))


def itself(held: Any) -> Any:
    return held


HOLDERS: dict[str, tuple[Callable[[nn.Module], object], Callable[[Any], Any]]] = {
    "lambda": (lambda block: lambda x: block(x), itself),
    "lambda default": (lambda block: lambda x, b=block: b(x), itself),
    "keyword-only default": (lambda block: lambda x, *, b=block: b(x), itself),
    "partial": (lambda block: functools.partial(run_block, block), itself),
    "SimpleNamespace": (lambda block: types.SimpleNamespace(block=block), lambda h: h.block),
    "OrderedDict": (lambda block: OrderedDict(block=block), lambda h: h["block"]),
    "defaultdict": (lambda block: defaultdict(list, block=block), lambda h: h["block"]),
    "dict of lists": (lambda block: {"blocks": [block]}, lambda h: h["blocks"][0]),
    "tuple in a list": (lambda block: [(1, block)], lambda h: h[0][1]),
    "set": (lambda block: {block}, first),
    "frozenset": (lambda block: frozenset({block}), first),
    "deque": (lambda block: deque([block], maxlen=2), first),
    "bound method": (lambda block: block.forward, itself),
}


@pytest.mark.parametrize(("holder", "reach"), HOLDERS.values(), ids=HOLDERS.keys())
def test_a_module_held_outside_the_tree_runs_as_a_shadow(
    holder: Callable[[nn.Module], object], reach: Callable[[Any], Any]
) -> None:
    block = Outside()
    model = Holding(holder(block), reach)
    add_hooks(block)
    add_hooks(model)
    report = score_untouched(model, (4,), block)
    assert block.calls == 0
    assert report.trace_method == "torch.export"  # torch.fx calls only modules of the tree
    assert [(r.op, r.params, r.mults, r.adds) for r in report.layers] == [
        ("linear", 20, 16, 16), ("relu", 0, 4, 0),
    ]


class Box:
    """An object of a class scoring does not rebuild."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block


def test_a_module_behind_an_object_of_another_class_is_refused() -> None:
    block = Outside()
    model = Holding(Box(block), lambda held: held.block)
    add_hooks(block)
    assert refused_untouched(model, (4,), block) == (
        "module 'Holding' keeps a module (Outside) in its attribute 'held', inside a Box, "
        "outside the module tree: scoring cannot trace it without running its code (and hooks) "
        "on the real model; register it as a submodule (assign it to a module attribute, or "
        "keep it in an nn.ModuleList or nn.ModuleDict)"
    )


ELSEWHERE: list[nn.Module] = []


class Trainer:
    """A training framework's object that keeps the model it trains."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model


def test_a_back_reference_to_the_model_is_let_through_and_refused_only_if_called() -> None:
    model = Tiny()
    model.trainer = Trainer(model)
    report = score_untouched(model, (2, 4, 4))
    assert rows(report) == rows(score_model(Tiny(), input_shape=(2, 4, 4)))
    calling = Holding(None, lambda held: held.model.block)  # the real block, not its shadow
    calling.held = Trainer(calling)
    calling.block = Outside()
    add_hooks(calling.block)
    assert "torch.export would call a module (Outside) that the model reaches through " in (
        refused_untouched(calling, (4,))
    )


def test_a_module_called_through_a_global_is_refused_before_it_runs() -> None:
    """No search of the model's attributes finds it; torch.export's call of it is refused
    before its hooks (the always-call forward hooks too) or its forward run."""
    block = Outside()
    add_hooks(block)
    ELSEWHERE[:] = [block]
    try:
        message = refused_untouched(Holding(None, lambda held: ELSEWHERE[0]), (4,), block)
    finally:
        ELSEWHERE.clear()
    assert message.startswith("symbolic tracing failed in the top-level module (NameError: ")
    assert message.endswith(
        "and torch.export would call a module (Outside) that the model reaches through a "
        "global, a class attribute or an object of another class, not through its module "
        "tree: scoring cannot trace it without running its code (and hooks) on the real model; "
        "register it as a submodule (assign it to a module attribute, or keep it in an "
        "nn.ModuleList or nn.ModuleDict) and call it from there"
    )


def remember_last(memory: Any, y: torch.Tensor) -> None:
    memory["last"] = y


def remember_shape(memory: Any, y: torch.Tensor) -> None:
    memory.append(y.shape)


def remember_nested(memory: Any, y: torch.Tensor) -> None:
    memory["outputs"].append(y)
    memory["sizes"]["fc"] = [y.shape[-1]]


class Remembers(Observed):
    """A forward that writes what it computes into a container of its own."""

    def __init__(self, memory: object, write: Callable[[Any, torch.Tensor], None]) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.memory = memory
        self.write = write
        self.built = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        self.write(self.memory, y)
        return y


@pytest.mark.parametrize(
    ("memory", "write"),
    [
        (dict, remember_last),
        (list, remember_shape),
        (lambda: {"outputs": [], "sizes": {"fc": []}}, remember_nested),
    ],
    ids=["cache dict", "history list", "nested dict of lists"],
)
def test_what_a_forward_writes_into_its_containers_stays_in_the_shadow(
    memory: Callable[[], object], write: Callable[[Any, torch.Tensor], None]
) -> None:
    model = Remembers(memory(), write)
    empty = memory()
    report = score_untouched(model, (4,))
    assert model.memory == empty
    assert _saves(model)
    assert report.trace_method == "symbolic_trace"
    assert [(r.name, r.op, r.params, r.mults, r.adds) for r in report.layers] == [
        ("fc", "linear", 20, 16, 16),
    ]


def test_closures_a_list_method_and_a_parent_link_are_rebuilt_around_the_shadows() -> None:
    """The list two closures share is copied once (they share the copy), a list's `append`
    appends to the list's copy, and a layer's weak link to its parent leads to the parent's
    shadow."""

    def logger() -> tuple[Callable[[object], None], Callable[[], int]]:
        seen: list[object] = []

        def log(item: object) -> None:
            seen.append(item)

        return log, lambda: len(seen)

    class Child(nn.Module):
        def __init__(self, parent: nn.Module) -> None:
            super().__init__()
            self.parent = weakref.ref(parent)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            parent = self.parent()
            assert parent is not None
            parent.runs += 1
            return x * parent.runs

    class Parent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log, self.count = logger()
            self.kept: list[object] = []
            self.keep = self.kept.append
            self.runs = 0
            self.child = Child(self)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.log(x)
            self.keep(x)
            if (self.count(), len(self.kept)) != (1, 1):
                raise RuntimeError("a closure or the list's method writes elsewhere")
            return self.child(x) * 2

    model = Parent()
    report = score_untouched(model, (4,))
    assert (model.count(), model.kept, model.runs) == (0, [], 0)
    assert [(r.op, r.mults) for r in report.layers] == [("mul", 4), ("mul", 4)]


class Stats:
    def __init__(self) -> None:
        self.count = 0


def test_a_change_to_an_object_of_another_class_is_reported() -> None:
    """Such objects are shared (copying them would run their class's code); the change is
    named in a warning."""

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.stats = Stats()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.stats.count += 1
            return self.fc(x)

    model = Counting()
    assert (
        "the forward changed attribute 'count' of the Stats object in attribute 'stats' of "
        "module 'Counting': scoring shares objects other than modules, tensors and containers "
        "with the model, so the change stays on the model"
    ) in score_model(model, input_shape=(4,)).warnings
    assert model.stats.count == 1
