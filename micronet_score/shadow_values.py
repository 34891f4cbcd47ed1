"""The values a shadow keeps in its attributes (see `micronet_score.shadow`): rebuilt or shared.

Rebuilt, at any nesting: list, tuple, dict (OrderedDict, defaultdict and other dict subclasses
keep their class), set, frozenset, deque, SimpleNamespace, `functools.partial`, bound methods,
plain functions (their closure cells, defaults and attributes), weak references to modules and
methods of builtin containers (`outputs.append`).
Mutable containers are always copied, so that what a forward writes into them lands in the
copy; immutable ones, and callables, only where something inside them changed. Modules inside
are shadowed, tensors are passed to `convert` (or shared), and everything else is shared.

No user code runs here: new objects are made with the builtin base class's `__new__` and
filled with the base class's own methods, so a subclass's `__init__`, `__setitem__` or
`__setattr__` is never called. A subclass with `__slots__` is not rebuilt (its slots could not
be filled without its code), nor is a value more than `_DEPTH` containers deep.
"""

from __future__ import annotations

import functools
import gc
import types
import weakref
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

Convert = Callable[[torch.Tensor], torch.Tensor]
Rebuild = Callable[[object, "Build", str, int], object]

_DEPTH = 32  # containers deep; past it values are shared (and the walk below may refuse them)
_WALK_DEPTH = 5  # references followed from an attribute in search of an outside module
_WALK_BUDGET = 200_000  # objects the search may visit per shadow


@dataclass(frozen=True)
class Build:
    """The state of building one shadow.

    `module(original, path)` returns the original module's shadow. `own` maps the id of each
    module of the user's module tree to the module. `memo` maps the id of each original object
    already handled to (original, rebuilt): the original is kept so that its id cannot be
    reused by another object while the build runs. `tree` maps each shadow's id to (shadow, the
    path it was first reached by); `seen` is the search's memory (see `outsider`).
    """

    convert: Convert | None
    module: Callable[[nn.Module, str], nn.Module]
    own: dict[int, nn.Module]
    memo: dict[int, tuple[object, object]] = field(default_factory=dict)
    tree: dict[int, tuple[nn.Module, str]] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)


_ATOMS = (
    type(None), bool, int, float, complex, str, bytes, range, slice, torch.dtype, torch.device,
    torch.layout, torch.memory_format, torch.Size,
)


def shadow_value(value: object, build: Build, where: str, depth: int) -> object:
    """`value` as the shadow keeps it (see the module docstring). `where` (the attribute's path)
    names the modules found inside; `depth` counts the containers around `value`."""
    kind = type(value)  # never `isinstance`: a user class's `__class__` property would run
    if issubclass(kind, nn.Module):
        assert isinstance(value, nn.Module)
        return build.module(value, where)
    if issubclass(kind, torch.Tensor):
        assert isinstance(value, torch.Tensor)
        return value if build.convert is None else build.convert(value)
    if kind in _ATOMS or depth >= _DEPTH:
        return value
    done = build.memo.get(id(value))
    if done is not None:
        return done[1]
    rebuild = _rebuilder(kind)
    return value if rebuild is None else rebuild(value, build, where, depth + 1)


def _rebuilder(kind: type) -> Rebuild | None:
    if kind is functools.partial:  # a subclass may need its own `__new__`
        return _partial
    if kind is types.MethodType:
        return _method
    if kind is types.FunctionType:
        return _function
    if kind is weakref.ref:
        return _weakref
    if kind is types.BuiltinMethodType:
        return _builtin_method
    for base, rebuild in _CONTAINERS:
        if issubclass(kind, base):
            return rebuild if _no_slots(kind, base) else None
    return None


def _no_slots(kind: type, base: type) -> bool:
    for klass in kind.__mro__:
        if klass in base.__mro__:
            break
        slots = vars(klass).get("__slots__", ())
        names = (slots,) if isinstance(slots, str) else tuple(slots)
        if any(name not in ("__dict__", "__weakref__") for name in names):
            return False
    return True


def instance_dict(value: object) -> dict[str, object] | None:
    """`value.__dict__`, read without running the class's `__getattr__`; None if it has none."""
    try:
        state = object.__getattribute__(value, "__dict__")  # the slot, not `__getattr__`
    except AttributeError:
        return None
    return state if type(state) is dict else None


def _fill_dict(value: object, new: object, build: Build, where: str, depth: int) -> None:
    """The instance attributes of a rebuilt subclass instance (or partial, or function)."""
    state = instance_dict(value)
    if state:
        target = instance_dict(new)
        assert target is not None
        target.update({k: shadow_value(v, build, where, depth) for k, v in state.items()})


def _dict(value: object, build: Build, where: str, depth: int) -> object:
    assert isinstance(value, dict)
    new = dict.__new__(type(value))
    build.memo[id(value)] = (value, new)
    ordered = issubclass(type(value), OrderedDict)
    setitem = OrderedDict.__setitem__ if ordered else dict.__setitem__
    for key, item in dict.items(value):
        setitem(
            new,
            shadow_value(key, build, where, depth),
            shadow_value(item, build, where, depth),
        )
    if issubclass(type(value), defaultdict):
        assert isinstance(value, defaultdict)
        factory = shadow_value(value.default_factory, build, where, depth)
        object.__setattr__(new, "default_factory", factory)  # the slot, not a `__setattr__`
    _fill_dict(value, new, build, where, depth)
    return new


def _list(value: object, build: Build, where: str, depth: int) -> object:
    assert isinstance(value, list)
    new = list.__new__(type(value))
    build.memo[id(value)] = (value, new)
    list.extend(new, [shadow_value(item, build, where, depth) for item in list.__iter__(value)])
    _fill_dict(value, new, build, where, depth)
    return new


def _deque(value: object, build: Build, where: str, depth: int) -> object:
    assert isinstance(value, deque)
    new = deque.__new__(type(value))
    build.memo[id(value)] = (value, new)
    items = [shadow_value(item, build, where, depth) for item in deque.__iter__(value)]
    deque.__init__(new, items, value.maxlen)
    _fill_dict(value, new, build, where, depth)
    return new


def _set(value: object, build: Build, where: str, depth: int) -> object:
    assert isinstance(value, set)
    new = set.__new__(type(value))
    build.memo[id(value)] = (value, new)
    set.update(new, [shadow_value(item, build, where, depth) for item in set.__iter__(value)])
    _fill_dict(value, new, build, where, depth)
    return new


def _namespace(value: object, build: Build, where: str, depth: int) -> object:
    new = types.SimpleNamespace.__new__(type(value))
    build.memo[id(value)] = (value, new)
    _fill_dict(value, new, build, where, depth)
    return new


def _immutable(base: type[tuple[object, ...]] | type[frozenset[object]]) -> Rebuild:
    """Tuples and frozensets are made whole, so a cycle back into one being rebuilt meets the
    original; they are kept as they are when nothing inside changed."""

    def rebuild(value: object, build: Build, where: str, depth: int) -> object:
        build.memo[id(value)] = (value, value)
        old = list(base.__iter__(value))  # type: ignore[arg-type]
        items = [shadow_value(item, build, where, depth) for item in old]
        state = instance_dict(value)
        if all(a is b for a, b in zip(items, old, strict=True)) and not state:
            return value
        try:
            new = base.__new__(type(value), items)  # type: ignore[type-var]
        except TypeError:  # a subclass that needs its own `__new__` (torch.Size)
            return value
        _fill_dict(value, new, build, where, depth)
        build.memo[id(value)] = (value, new)
        return new

    return rebuild


_CONTAINERS: tuple[tuple[type, Rebuild], ...] = (
    (dict, _dict),
    (list, _list),
    (tuple, _immutable(tuple)),
    (set, _set),
    (frozenset, _immutable(frozenset)),
    (deque, _deque),
    (types.SimpleNamespace, _namespace),
)


def _partial(value: object, build: Build, where: str, depth: int) -> object:
    assert isinstance(value, functools.partial)
    build.memo[id(value)] = (value, value)
    func = shadow_value(value.func, build, where, depth)
    args = [shadow_value(a, build, where, depth) for a in value.args]
    keywords = {k: shadow_value(v, build, where, depth) for k, v in value.keywords.items()}
    unchanged = func is value.func and all(map(_same, args, value.args)) and all(
        v is value.keywords[k] for k, v in keywords.items()
    )
    if unchanged and not instance_dict(value):
        return value
    assert callable(func)
    new = functools.partial(func, *args, **keywords)
    _fill_dict(value, new, build, where, depth)
    build.memo[id(value)] = (value, new)
    return new


def _same(a: object, b: object) -> bool:
    return a is b


def _method(value: object, build: Build, where: str, depth: int) -> object:
    assert isinstance(value, types.MethodType)
    owner = shadow_value(value.__self__, build, where, depth)
    func = shadow_value(value.__func__, build, where, depth)
    if owner is value.__self__ and func is value.__func__:
        return value
    assert callable(func)
    new = types.MethodType(func, owner)
    build.memo[id(value)] = (value, new)
    return new


def _function(value: object, build: Build, where: str, depth: int) -> object:
    """A function whose closure cells, defaults or attributes hold something rebuilt becomes a
    new function on the same code and globals, with new cells (one per original cell, so that
    closures sharing a cell still share one)."""
    assert isinstance(value, types.FunctionType)
    build.memo[id(value)] = (value, value)
    closure = tuple(_cell(cell, build, where, depth) for cell in value.__closure__ or ())
    defaults = shadow_value(value.__defaults__, build, where, depth)
    kwdefaults = shadow_value(value.__kwdefaults__, build, where, depth)
    unchanged = (
        all(map(_same, closure, value.__closure__ or ()))
        and defaults is value.__defaults__
        and kwdefaults is value.__kwdefaults__
    )
    if unchanged and not instance_dict(value):
        return value
    assert defaults is None or isinstance(defaults, tuple)
    new = types.FunctionType(
        value.__code__, value.__globals__, value.__name__, defaults, closure or None
    )
    new.__kwdefaults__ = kwdefaults  # type: ignore[assignment]
    for name in ("__qualname__", "__module__", "__doc__", "__annotations__", "__type_params__"):
        if hasattr(value, name):  # (`__type_params__` from Python 3.12)
            setattr(new, name, getattr(value, name))
    _fill_dict(value, new, build, where, depth)
    build.memo[id(value)] = (value, new)
    return new


def _cell(cell: types.CellType, build: Build, where: str, depth: int) -> types.CellType:
    done = build.memo.get(id(cell))
    if done is not None:
        assert isinstance(done[1], types.CellType)
        return done[1]
    build.memo[id(cell)] = (cell, cell)
    try:
        contents = cell.cell_contents
    except ValueError:  # empty: a name not yet assigned
        return cell
    new_contents = shadow_value(contents, build, where, depth)
    if new_contents is contents:
        return cell
    new = types.CellType(new_contents)
    build.memo[id(cell)] = (cell, new)
    return new


_BUILTIN_CONTAINERS = (list, dict, set, deque, OrderedDict, defaultdict)


def _builtin_method(value: object, build: Build, where: str, depth: int) -> object:
    """A method of a container (`self.log = outputs.append`) is the same method of its copy;
    only for builtin container classes, whose attribute lookup runs no user code."""
    assert isinstance(value, types.BuiltinMethodType)
    owner = value.__self__
    if type(owner) not in _BUILTIN_CONTAINERS:
        return value
    new = getattr(shadow_value(owner, build, where, depth), value.__name__)
    build.memo[id(value)] = (value, new)
    return new


def _weakref(value: object, build: Build, where: str, depth: int) -> object:
    """A weak reference to a module (a layer's link to its parent) refers to its shadow."""
    assert isinstance(value, weakref.ref)
    target = value()
    if not issubclass(type(target), nn.Module):
        return value
    assert isinstance(target, nn.Module)
    new = weakref.ref(build.module(target, where))
    build.memo[id(value)] = (value, new)
    return new


_WALK_SKIPPED = (
    type, types.ModuleType, types.CodeType, torch.Tensor, torch.fx.Graph, torch.fx.Node,
)


def outsider(value: object, build: Build) -> tuple[nn.Module, str] | None:
    """A module reachable from `value` that is neither one of the build's shadows nor in the
    user's module tree, if there is one, with the name of the class of the first object on the
    way that `shadow_value` does not rebuild (what hides the module).

    The user's own modules reached through an object of another class are back-references (a
    training framework's trainer, an averaging helper, holding the model): refusing them would
    refuse such models, and a call of one is refused by `outsiders_refused` when it happens.
    Follows `gc.get_referents` up to `_WALK_DEPTH` steps, never into tensors, classes, Python
    modules, code, fx graphs (data that names modules, never calls them) or a function's
    globals (a model's code reaches everything through them); `build.seen` keeps the depth
    left at each object visited, so no object is searched twice as deep.
    """
    stack: list[tuple[object, int, str | None]] = [(value, _WALK_DEPTH, None)]
    while stack:
        obj, left, carrier = stack.pop()
        kind = type(obj)
        if issubclass(kind, nn.Module):
            if id(obj) not in build.tree and id(obj) not in build.own:
                assert isinstance(obj, nn.Module)
                return obj, carrier or kind.__name__
            continue
        if kind in _ATOMS or issubclass(kind, _WALK_SKIPPED) or left == 0:
            continue
        if build.seen.get(id(obj), -1) >= left or len(build.seen) >= _WALK_BUDGET:
            continue
        build.seen[id(obj)] = left
        references = gc.get_referents(obj)
        if kind is types.FunctionType:
            assert isinstance(obj, types.FunctionType)
            skip = (id(obj.__globals__), id(getattr(obj, "__builtins__", None)))
            references = [r for r in references if id(r) not in skip]
        if carrier is None and _rebuilder(kind) is None:
            carrier = kind.__name__
        stack.extend((r, left - 1, carrier) for r in references)
    return None
