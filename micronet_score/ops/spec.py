"""The one table of op kinds: how each kind is spelled in every dialect, its traits, its formulas.

An `OpSpec` is the whole knowledge of one kind of operation: the module classes, functions, Tensor
methods and dispatcher ops (`aten::conv2d` in the pre-dispatch IR, `aten::convolution` in the
core-ATen IR, `quantized::add_relu`, ...) that compute it, the traits the engine reads (free,
shape-preserving, dot product, fold target, activation), the non-tensor attributes its formulas
read, and one formula per rule variant. Every other table (classification, shape propagation,
folding, rule-file validation) is derived from the registered specs.

The table is torch-free: spellings and formulas may be written as dotted paths
(`"torch.nn.functional.conv2d"`, `"micronet_score.ops.formulas_core:dot_product"`) and are only
resolved when a model is scored, so validating a rule file never imports torch. Specs registered
from Python (`register_op`) may give the objects themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from importlib import import_module
from typing import Any


class Trait(str, Enum):
    """What the engine needs to know about a kind besides its formula."""

    FREE = "free"  # moves or relabels data: no arithmetic, no row in the report
    SHAPE_PRESERVING = "shape_preserving"  # output has the input's shape and dtype
    DOT_PRODUCT = "dot_product"  # a weighted sum over stored weights (sparsity-aware)
    FOLD_TARGET = "fold_target"  # an eval BatchNorm on its output channels can fold into it
    FOLDABLE = "foldable"  # an eval BatchNorm: may fold into the fold target it follows
    ACTIVATION = "activation"  # per-element cost from the rule set's `activations` table
    COMPOSITE = "composite"  # a layer of several weight matrices: every parameter an operand
    QUANTIZER = "quantizer"  # bounds the width of the values it outputs
    STATEFUL = "stateful"  # computes differently in training mode (BatchNorm, dropout)


FormulaRef = Callable[..., Any] | str
Spelling = Any  # a class, a callable, or a dotted path naming one


@dataclass(frozen=True)
class OpSpec:
    """One kind of operation and every way a graph can spell it.

    kind: the name reports and rule files use (e.g. "conv"); unique in the table.
    formulas: rule variant -> formula, a function `(NodeFacts, FormulaContext) -> NodeCost`
        (or "module:function"); "micronet" is required and is the default of every rule set.
    modules: nn.Module classes (or dotted paths). A subclass is counted by the spec only when it
        does not override `forward` (outside torch itself); otherwise it is traced into.
    functions: torch / torch.nn.functional / operator callables, or dotted paths to them.
    methods: Tensor method names (`x.relu()`), for symbolic traces.
    ops: dispatcher ops as "namespace::name" overload packets, e.g. "aten::addmm"; every
        overload of the packet is covered.
    traits: see `Trait`.
    attributes: non-tensor settings the formulas read, from the module or the call's arguments.
    description: the counting rule in one sentence, for `docs` and error messages.
    """

    kind: str
    formulas: Mapping[str, FormulaRef]
    modules: tuple[Spelling, ...] = ()
    functions: tuple[Spelling, ...] = ()
    methods: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    traits: frozenset[Trait] = frozenset()
    attributes: tuple[str, ...] = ()
    description: str = ""
    builtin: bool = field(default=False, compare=False)

    def has(self, trait: Trait) -> bool:
        return trait in self.traits


class RegistrationError(ValueError):
    """A spec that conflicts with the table: a kind or spelling registered twice, or no
    default formula."""


# Modules whose SPECS tuple is the built-in table, in order. Kept as names: importing them is cheap
# (they hold strings), and they never import torch.
_BUILTIN_MODULES = (
    "micronet_score.ops.table_core",
    "micronet_score.ops.table_sequence",
    "micronet_score.ops.table_extra",
)
_SPECS: dict[str, OpSpec] = {}
_LOADED = False
_listeners: list[Callable[[], None]] = []


def _ensure_builtins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for name in _BUILTIN_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as missing:
            if missing.name == name:
                continue
            raise
        for spec in module.SPECS:
            _add(spec, builtin=True)


def _add(spec: OpSpec, builtin: bool) -> None:
    if spec.kind in _SPECS:
        raise RegistrationError(f"op kind {spec.kind!r} is registered twice")
    if "micronet" not in spec.formulas:
        raise RegistrationError(f"op kind {spec.kind!r} has no 'micronet' formula")
    _check_spellings_unique(spec)
    _SPECS[spec.kind] = OpSpec(**{**vars(spec), "builtin": builtin})
    for listener in _listeners:
        listener()


def _spellings(spec: OpSpec) -> Iterable[tuple[str, object]]:
    for module in spec.modules:
        yield "module", module
    for function in spec.functions:
        yield "function", function
    for method in spec.methods:
        yield "method", method
    for op in spec.ops:
        yield "op", op


def _check_spellings_unique(new: OpSpec) -> None:
    taken = {spelling: spec.kind for spec in _SPECS.values() for spelling in _spellings(spec)}
    for spelling in _spellings(new):
        if spelling in taken:
            kind, name = spelling
            raise RegistrationError(
                f"{kind} {_name(name)!r} of op kind {new.kind!r} is already registered for "
                f"op kind {taken[spelling]!r}"
            )


def _name(spelling: object) -> str:
    if isinstance(spelling, str):
        return spelling
    qualname = getattr(spelling, "__qualname__", None) or getattr(spelling, "__name__", None)
    module = getattr(spelling, "__module__", None)
    return f"{module}.{qualname}" if module and qualname else repr(spelling)


def register_op(spec: OpSpec) -> OpSpec:
    """Add a spec to the table, e.g. a formula for a layer of one's own.

    Raises RegistrationError when the kind or one of its spellings is already registered, when
    `formulas` has no "micronet" entry, or for the ACTIVATION trait (its cost would have to be
    in every rule file: give the spec its own formula instead). Returns the spec, as registered.
    """
    _ensure_builtins()
    if Trait.ACTIVATION in spec.traits:
        raise RegistrationError(
            f"op kind {spec.kind!r}: the activation trait is for built-in kinds whose cost the "
            "rule files give; give the spec a formula of its own"
        )
    _add(spec, builtin=False)
    return _SPECS[spec.kind]


def unregister_op(kind: str) -> None:
    """Remove a spec registered with `register_op` (built-in kinds cannot be removed).

    Raises RegistrationError for a built-in or unknown kind."""
    _ensure_builtins()
    spec = _SPECS.get(kind)
    if spec is None or spec.builtin:
        what = "a built-in kind" if spec is not None else "not a registered kind"
        raise RegistrationError(f"{kind!r} is {what}: only kinds added with register_op can be "
                                "removed")
    del _SPECS[kind]
    for listener in _listeners:
        listener()


def all_specs() -> tuple[OpSpec, ...]:
    _ensure_builtins()
    return tuple(_SPECS.values())


def spec_of(kind: str) -> OpSpec:
    """The spec of a kind. Raises KeyError for an unknown kind."""
    _ensure_builtins()
    return _SPECS[kind]


def kinds_with(trait: Trait) -> frozenset[str]:
    return frozenset(spec.kind for spec in all_specs() if trait in spec.traits)


def builtin_kinds_with(trait: Trait) -> frozenset[str]:
    return frozenset(s.kind for s in all_specs() if trait in s.traits and s.builtin)


def variants(kind: str) -> tuple[str, ...]:
    """Formula variants a rule file may choose for `kind` ("micronet" first)."""
    names = spec_of(kind).formulas
    return ("micronet", *sorted(v for v in names if v != "micronet"))


def formula(kind: str, variant: str) -> Callable[..., Any]:
    """The formula of `kind` under `variant`, imported on first use."""
    ref = spec_of(kind).formulas[variant]
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        function: Callable[..., Any] = getattr(import_module(module), name)
        return function
    return ref


def on_change(listener: Callable[[], None]) -> None:
    """Call `listener` whenever the table changes (the index drops its caches)."""
    _listeners.append(listener)
