"""Stand-ins for the user's modules, so that tracing can never run their hooks or change them.

Tracing runs the model's Python code: torch's tracers set attributes on the root, torch.export
swaps parameters for fake ones, and a forward may store what it computes on `self`. All of that
happens on a *shadow*: for every module, a new object of the same class whose attribute,
parameter, buffer and child dicts are its own copies, whose hook dicts are empty, and whose
values (tensors included) are the user's own objects, shared, never copied. The user's modules
are only read, never mutated even for a moment (so nothing needs restoring if tracing fails).
The symbolic tracer and the shape propagation call a module's `forward`, never `__call__`, so
hooks registered for all modules (`register_module_forward_hook`) are not run either; torch.export
calls `__call__`, so the caller refuses to export while such hooks exist.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from functools import cache

import torch
import torch.fx
from torch import nn

Convert = Callable[[torch.Tensor], torch.Tensor]


@cache
def _hook_dicts() -> frozenset[str]:
    """The names of the per-module hook dicts (`_forward_hooks`, `_state_dict_pre_hooks`, ...),
    read from a fresh module so that hook kinds torch adds later are covered too."""
    hooks = (name for name, value in vars(nn.Module()).items() if isinstance(value, dict))
    return frozenset(name for name in hooks if "hook" in name)


def shadow(
    module: nn.Module, *, convert: Convert | None = None, training: bool | None = None
) -> nn.Module:
    """A hook-free stand-in for `module` and everything under it (see the module docstring).

    A module reachable twice (shared layers) gets one shadow. `convert` replaces each parameter,
    buffer and tensor attribute in the shadow (e.g. by a fake tensor); `training` overrides every
    shadow's training flag. Building one costs a few dict copies per module; no tensor is copied.
    """
    memo: dict[int, nn.Module] = {}
    return _shadow(module, memo, convert, training)


def _shadow(
    module: nn.Module, memo: dict[int, nn.Module], convert: Convert | None, training: bool | None
) -> nn.Module:
    done = memo.get(id(module))
    if done is not None:
        return done
    twin: nn.Module = object.__new__(type(module))  # no __init__, no __setattr__: no user code
    memo[id(module)] = twin
    state = dict(vars(module))
    for name in _hook_dicts().intersection(state):
        state[name] = OrderedDict()
    state["_parameters"] = module._parameters.copy()
    state["_buffers"] = module._buffers.copy()
    state["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
    state["_modules"] = {
        name: None if child is None else _shadow(child, memo, convert, training)
        for name, child in module._modules.items()
    }
    for name, value in state.items():
        if name not in _OWN_DICTS:
            state[name] = _shadow_value(value, memo, convert, training)
    if convert is not None:
        for store in (state, state["_parameters"], state["_buffers"]):
            for name, value in store.items():
                if isinstance(value, torch.Tensor):
                    store[name] = convert(value)
    if training is not None:
        state["training"] = training
    vars(twin).update(state)
    return twin


class ShadowTracer(torch.fx.Tracer):
    """A symbolic tracer for shadows: module calls trace `forward` alone (`Module.__call__`
    would run hooks), tensors made in the forward are kept without `setattr`, and buffers read
    by the forward are graph values, so that an in-place update of one is recorded, not done."""

    proxy_buffer_attributes = True

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., object],
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


_OWN_DICTS = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"})


def _shadow_value(
    value: object, memo: dict[int, nn.Module], convert: Convert | None, training: bool | None
) -> object:
    """Modules kept in plain attributes (a list instead of a ModuleList) are shadowed too."""
    if isinstance(value, nn.Module):
        return _shadow(value, memo, convert, training)
    if type(value) in (list, tuple):
        assert isinstance(value, list | tuple)
        if any(isinstance(v, nn.Module) for v in value):
            items = [_shadow_value(v, memo, convert, training) for v in value]
            return items if isinstance(value, list) else tuple(items)
    if type(value) is dict and any(isinstance(v, nn.Module) for v in value.values()):
        return {k: _shadow_value(v, memo, convert, training) for k, v in value.items()}
    return value


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
