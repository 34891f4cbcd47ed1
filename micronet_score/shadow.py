"""Stand-ins for the user's modules, so that tracing can never run their hooks or change them.

Tracing runs the model's Python code: torch's tracers set attributes on the root, torch.export
swaps parameters for fake ones, and a forward may store what it computes on `self`. All of that
happens on a *shadow*: for every module, a new object of the same class whose attribute,
parameter, buffer and child dicts are its own copies, whose hook dicts are empty, and whose
values are the user's own objects (tensors included, never copied), in copies of the containers
that held them. The user's modules are only read, never mutated even for a moment (so nothing
needs restoring if tracing fails).

Shadow what we can rebuild, refuse what we cannot. Attribute values are rebuilt where they are
containers or callables that can hold modules (see `micronet_score.shadow_values`): the
containers are copied (so a forward's `self.cache[k] = y` lands in the copy) and every module
reached through them is shadowed. A module that is still reachable afterwards, through an
object we do not rebuild, is refused with a UserError before anything runs: tracing would run
its code, and its hooks, on the real model. What stays shared are the leaves: tensors, and
objects of other classes.

Limits. (1) A forward that changes an object of another class (`self.stats.count += 1`)
changes the user's object: copying it would mean running its class's code (`__copy__`,
`__reduce__`), so scoring does not; `shared_objects_watched` warns of such a change to an
object held by a module or by a container there (not deeper). (2) A
module reachable only through a global or a class attribute is invisible to the search, and
so is a module of the user's tree reached through an object of another class (a trainer
holding the model: a back-reference, let through); symbolic tracing never calls such a module
(torch.fx refuses modules outside the hierarchy) and torch.export's call of one is refused by
`outsiders_refused`, but a forward that calls its other methods (`GLOBAL_BLOCK.forward(x)`) or
sets its attributes changes the user's module. (3) The search
follows references a few steps deep within a budget; a module hidden deeper, or behind an
object that does not report its references to the garbage collector, is left to the guard.

The symbolic tracer and the shape propagation call a module's `forward`, never `__call__`, so
hooks registered for all modules (`register_module_forward_hook`) are not run either; torch.export
calls `__call__`, so the caller refuses to export while such hooks exist, and exports under
`outsiders_refused`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from functools import cache

import torch
import torch.fx
from torch import nn

from micronet_score.errors import UserError
from micronet_score.shadow_values import Build, Convert, instance_dict, outsider, shadow_value


@cache
def _hook_dicts() -> frozenset[str]:
    """The names of the per-module hook dicts (`_forward_hooks`, `_state_dict_pre_hooks`, ...),
    read from a fresh module so that hook kinds torch adds later are covered too."""
    hooks = (name for name, value in vars(nn.Module()).items() if isinstance(value, dict))
    return frozenset(name for name in hooks if "hook" in name)


# Every shadow alive, by id: the guard below lets them be called.
_SHADOWS: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()
_OWN_DICTS = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"})


def shadow(
    module: nn.Module, *, convert: Convert | None = None, training: bool | None = None
) -> nn.Module:
    """A hook-free stand-in for `module` and everything under it (see the module docstring).

    A module reachable twice (shared layers) gets one shadow. `convert` replaces each parameter,
    buffer and tensor attribute in the shadow (e.g. by a fake tensor); `training` overrides every
    shadow's training flag. Building one costs a few dict copies per module and a copy of each
    container attribute; no tensor is copied. Raises OutsiderRefusal (a UserError) when a module
    outside the tree stays reachable from an attribute (see `refuse_outsiders`).
    """
    build = Build(convert, lambda m, where: _shadow(m, build, where, training), _tree(module))
    twin = _shadow(module, build, "", training)
    refuse_outsiders(build, type(module).__name__)
    return twin


def _shadow(module: nn.Module, build: Build, path: str, training: bool | None) -> nn.Module:
    done = build.memo.get(id(module))
    if done is not None:
        assert isinstance(done[1], nn.Module)
        return done[1]
    twin: nn.Module = object.__new__(type(module))  # no __init__, no __setattr__: no user code
    build.memo[id(module)] = (module, twin)
    build.tree[id(twin)] = (twin, path)
    _SHADOWS[id(twin)] = twin
    hooks = _hook_dicts()
    state: dict[str, object] = {}
    for name, value in vars(module).items():
        if name in hooks:
            state[name] = OrderedDict()
        elif name in ("_parameters", "_buffers"):
            assert isinstance(value, dict)
            tensors = value.copy()  # (an OrderedDict in modules pickled by older torch)
            if build.convert is not None:
                tensors.update((k, _converted(v, build)) for k, v in value.items())
            state[name] = tensors
        elif name == "_non_persistent_buffers_set":
            state[name] = set(module._non_persistent_buffers_set)
        elif name == "_modules":
            state[name] = {
                key: None if child is None else _shadow(child, build, _join(path, key), training)
                for key, child in module._modules.items()
            }
        else:
            state[name] = shadow_value(value, build, _join(path, name), 0)
    if training is not None:
        state["training"] = training
    vars(twin).update(state)
    return twin


def _tree(module: nn.Module) -> dict[int, nn.Module]:
    """`module` and its submodules, by id (read from the `_modules` dicts: `modules()` may be
    overridden by the class)."""
    found: dict[int, nn.Module] = {}
    stack = [module]
    while stack:
        current = stack.pop()
        if id(current) not in found:
            found[id(current)] = current
            stack.extend(c for c in vars(current).get("_modules", {}).values() if c is not None)
    return found


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _converted(value: object, build: Build) -> object:
    if build.convert is not None and isinstance(value, torch.Tensor):
        return build.convert(value)
    return value


class OutsiderRefusal(UserError):
    """Scoring would have to run a module outside the model's module tree on the real model."""


def refuse_outsiders(build: Build, root_name: str) -> None:
    """Raise OutsiderRefusal if a module outside the user's module tree, and not a shadow, is
    reachable from a shadow's attributes.

    Such a module sits behind an object that `shadow_value` does not rebuild (an object of a
    custom class); tracing would run the user's own module. The search follows
    references (`gc.get_referents`) a few steps deep, past tensors, classes, Python modules and
    functions' globals, within a budget of objects, so it costs little on any model.
    """
    for twin, path in list(build.tree.values()):
        for name, value in vars(twin).items():
            if name in _OWN_DICTS or name in _hook_dicts():
                continue
            found = outsider(value, build)
            if found is not None:
                module, carrier = found
                raise OutsiderRefusal(
                    f"module '{path or root_name}' keeps a module ({type(module).__name__}) in "
                    f"its attribute '{name}', inside a {carrier}, outside the "
                    "module tree: scoring cannot trace it without running its code (and hooks) "
                    f"on the real model; {_REGISTER}"
                )


_REGISTER = (
    "register it as a submodule (assign it to a module attribute, or keep it in an "
    "nn.ModuleList or nn.ModuleDict)"
)


class _Outsider(BaseException):
    """Raised by the guard below. Not an Exception, so that neither a forward's `except
    Exception` nor `Module.__call__` (which runs always-call forward hooks on an error) can
    catch it on its way out."""


@contextlib.contextmanager
def outsiders_refused(note: str) -> Iterator[None]:
    """While the body runs, a call of a module that is not a shadow and existed before the body
    began raises OutsiderRefusal (`note` says what was calling it), before the module's hooks or
    forward run. For torch.export, which calls modules through `__call__`: it reaches the
    modules no search of the attributes sees (a global, a class attribute).

    Only calls from this thread are checked; modules made by the forward itself may be called.
    The modules that existed come from the garbage collector's list of objects.
    """
    import gc

    from torch.nn.modules import module as torch_module

    existing = {
        id(o): weakref.ref(o)
        for o in gc.get_objects()
        if issubclass(type(o), nn.Module) and _SHADOWS.get(id(o)) is not o
    }
    thread = threading.get_ident()

    def guard(module: nn.Module, args: object) -> None:
        if threading.get_ident() != thread:
            return
        known = existing.get(id(module))
        if known is not None and known() is module:
            raise _Outsider(type(module).__name__)

    handle = torch_module.register_module_forward_pre_hook(guard)
    try:
        yield
    except _Outsider as refused:
        raise OutsiderRefusal(
            f"{note} would call a module ({refused}) that the model reaches through a global, a "
            "class attribute or an object of another class, not through its module tree: "
            "scoring cannot trace it without running its code (and hooks) on the real model; "
            f"{_REGISTER} and call it from there"
        ) from None
    finally:
        handle.remove()


def shared_objects_watched(model: nn.Module) -> Callable[[], str | None]:
    """A check that describes the first change tracing made to an object the shadows share with
    `model` (see the module docstring), or returns None. Watched: objects of other classes kept
    in a module's attribute, or in a list, tuple or dict there; what is compared is which
    object each of their attributes holds, and the length of a list, dict or set held.
    """
    watched: list[tuple[str, object, dict[str, object]]] = []
    for path, module in model.named_modules():
        for name, value in vars(module).items():
            for item in _with_items(value):
                state = _opaque_state(item)
                if state is not None:
                    where = f"attribute '{name}' of module '{path or type(model).__name__}'"
                    watched.append((where, item, state))

    def changed() -> str | None:
        for where, item, state in watched:
            now = _opaque_state(item)
            for key in sorted(set(state) | set(now or {}), key=str):
                if (now or {}).get(key) != state.get(key):
                    return (
                        f"the forward changed attribute '{key}' of the {type(item).__name__} "
                        f"object in {where}: scoring shares objects other than modules, tensors "
                        "and containers with the model, so the change stays on the model"
                    )
        return None

    return changed


def _with_items(value: object) -> list[object]:
    if type(value) is dict:
        assert isinstance(value, dict)
        return list(value.values())
    if type(value) in (list, tuple):
        assert isinstance(value, list | tuple)
        return list(value)
    return [value]


def _opaque_state(value: object) -> dict[str, object] | None:
    kind = type(value)
    owner = getattr(kind, "__module__", None)
    if issubclass(kind, _NOT_WATCHED) or not isinstance(owner, str) or owner.startswith("torch"):
        return None
    state = instance_dict(value)
    if state is None:
        return None
    sized = (list, dict, set)
    return {
        key: (id(item), len(item) if type(item) in sized else None)  # type: ignore[arg-type]
        for key, item in state.items()
    }


_NOT_WATCHED = (
    nn.Module, torch.Tensor, type, types.ModuleType, types.FunctionType, types.MethodType,
    functools.partial, types.SimpleNamespace, dict, list, tuple, set, frozenset,
)


class ShadowTracer(torch.fx.Tracer):
    """A symbolic tracer for shadows: module calls trace `forward` alone (`Module.__call__`
    would run hooks), tensors made in the forward are kept without `setattr`, and buffers read
    by the forward are graph values, so that an in-place update of one is recorded, not done."""

    proxy_buffer_attributes = True

    def call_module(
        self,
        m: nn.Module,
        forward: object,
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> object:
        return super().call_module(m, m.forward, args, kwargs)  # `forward` runs hooks

    def create_arg(self, a: object) -> torch.fx.node.Argument:
        """A tensor the model does not own goes in the root's own dict: torch would `setattr`
        it, running any `__setattr__` the root's class defines."""
        if (
            isinstance(a, torch.Tensor)
            and not isinstance(a, nn.Parameter)
            and a not in self.tensor_attrs
            and not any(a is buffer for buffer in self.root.buffers())
        ):
            name = self.get_fresh_qualname("_tensor_constant")
            self.tensor_attrs[a] = name
            vars(self.root)[name] = a
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)


def parametrized_value(parametrizations: nn.Module) -> torch.Tensor:
    """What a `torch.nn.utils.parametrize` list computes, as the model computes it at inference.

    `ParametrizationList.forward` calls each parametrization through `__call__` (running hooks)
    and in the model's mode: spectral norm's power iteration, for one, updates its buffers in
    training mode. Here each step's `forward` runs on an eval-mode shadow, under no_grad.
    """
    steps = [
        shadow(step, training=False)
        for step in parametrizations._modules.values()
        if step is not None
    ]
    if vars(parametrizations).get("is_tensor", True):
        originals: Iterable[object] = (_stored(parametrizations, "original"),)
    else:
        count = int(vars(parametrizations)["ntensors"])
        originals = [_stored(parametrizations, f"original{i}") for i in range(count)]
    with torch.no_grad():
        value = steps[0].forward(*originals)
        for step in steps[1:]:
            value = step.forward(value)
    assert isinstance(value, torch.Tensor)
    return value


def _stored(module: nn.Module, name: str) -> object:
    return module._parameters.get(name, module._buffers.get(name))


def global_hook() -> str | None:
    """The first hook registered for every module that running a model's forward would call
    (forward, forward pre-, and module/parameter/buffer registration hooks), described."""
    from torch.nn.modules import module as torch_module

    for kind, table in (
        ("forward pre-hook", torch_module._global_forward_pre_hooks),
        ("forward hook", torch_module._global_forward_hooks),
        ("module registration hook", torch_module._global_module_registration_hooks),
        ("parameter registration hook", torch_module._global_parameter_registration_hooks),
        ("buffer registration hook", torch_module._global_buffer_registration_hooks),
    ):
        for hook in table.values():
            return f"the global {kind} {_name(hook)}"
    return None


def module_hook(model: nn.Module) -> str | None:
    """The first forward (pre-)hook on `model` or a module under it that scoring skips, described.

    torch's own hooks are left out: pruning's (the counter applies their masks itself) and the
    input check `ExportedProgram.module()` adds (the shapes are checked by tracing)."""
    for path, module in model.named_modules():
        for kind, table in (
            ("forward pre-hook", module._forward_pre_hooks),
            ("forward hook", module._forward_hooks),
        ):
            for hook in table.values():
                if not _from_torch(hook):
                    return f"module '{path or type(model).__name__}' has the {kind} {_name(hook)}"
    return None


def _from_torch(hook: object) -> bool:
    hook = getattr(hook, "func", hook)  # functools.partial
    owner = getattr(hook, "__module__", None) or type(hook).__module__
    return owner == "torch" or owner.startswith("torch.")


def _name(hook: object) -> str:
    hook = getattr(hook, "func", hook)  # functools.partial
    name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
    return f"'{name}'"
