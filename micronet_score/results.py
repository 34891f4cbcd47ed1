"""The result of an analysis: what the engine returns, and what every report is drawn from.

Each field is written once, in its dataclass: the JSON document (`to_dict`) and the CSV columns
are derived from the fields and their metadata. Kept free of torch and of any renderer, so that
reports can be built, loaded and compared cheaply.

Shapes are per example, without the batch dimension, as `--input-shape` takes them: the model
is traced at a batch of one and that leading 1 is dropped (see `per_example`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from micronet_score.rules import Baseline


def column(*, count: bool = False, key: str | None = None, then: tuple[str, ...] = (),
           csv: bool = True) -> dict[str, Any]:
    """Field metadata saying how a field is written out, as `field(metadata=column(...))`:
    `count` prints a whole number as an int, `key` names it differently in JSON and CSV, `then`
    lists properties written right after it, `csv=False` leaves it out of the CSV (a property in
    `then` stays in). A field without it is written as is, under its own name."""
    return {"count": count, "key": key, "then": then, "csv": csv}


def record(item: Any) -> dict[str, Any]:
    """The plain-data form of a result dataclass, in field order (see `column`)."""
    out: dict[str, Any] = {}
    for spec in fields(item):
        value = getattr(item, spec.name)
        name = spec.metadata.get("key") or spec.name
        out[name] = whole(value) if spec.metadata.get("count") else plain(value)
        for derived in spec.metadata.get("then", ()):
            out[derived] = plain(getattr(item, derived))
    return out


def csv_columns(kind: type) -> tuple[str, ...]:
    """The CSV header of a result dataclass: its JSON keys less the fields marked `csv=False`."""
    names: list[str] = []
    for spec in fields(kind):
        if spec.metadata.get("csv", True):
            names.append(spec.metadata.get("key") or spec.name)
        names.extend(spec.metadata.get("then", ()))
    return tuple(names)


def plain(value: Any) -> Any:
    """JSON-ready: a result (anything with `to_dict`) as its dict, a tuple as a list."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    return value


def whole(value: float) -> float | int:
    """Whole counts print as integers in machine formats."""
    return int(value) if float(value).is_integer() else value


def per_example(shape: Sequence[int]) -> tuple[int, ...]:
    """A traced output shape without the batch: the leading 1 of a batch of one is dropped when
    more dimensions follow. A 0-d or 1-d output (a summed loss), or one whose leading size is not
    1 (a sequence-first layout), is kept whole."""
    dims = tuple(int(d) for d in shape)
    return dims[1:] if len(dims) > 1 and dims[0] == 1 else dims


@dataclass(frozen=True)
class Layer:
    """One counted node: raw counts (`params`, `mults`, `adds`) and 32-bit equivalents
    (`effective_params` = storage_bits / 32, `effective_ops`). `output_shape` is per example
    (without the batch); `share` is this node's part of the score over the score."""

    name: str
    node: str = field(metadata=column(csv=False))
    module: str
    op: str
    target: str
    output_shape: tuple[int, ...]
    params: int
    weight_bits: int | None
    act_bits: int
    sparsity: float
    storage_format: str
    storage_bits: float = field(metadata=column(count=True, then=("effective_params",), csv=False))
    mults: float = field(metadata=column(count=True))
    adds: float = field(metadata=column(count=True))
    effective_ops: float
    share: float
    note: str

    @property
    def effective_params(self) -> float:
        return self.storage_bits / 32

    def to_dict(self) -> dict[str, Any]:
        return record(self)


@dataclass(frozen=True)
class Uncounted:
    """A node no rule covers. It is reported, never silently dropped."""

    node: str
    target: str
    module: str

    def to_dict(self) -> dict[str, Any]:
        return record(self)


@dataclass(frozen=True)
class Report:
    """A scored model: the score and its two parts, totals in 32-bit equivalents (`params`,
    `ops`) and raw counts (`mults`, `adds`), one Layer per counted node, and the nodes no rule
    covers. `input_shape` is without the batch."""

    score: float
    params_score: float
    ops_score: float
    params: float
    ops: float
    mults: float = field(metadata=column(count=True))
    adds: float = field(metadata=column(count=True))
    freebie: bool
    freebie_reason: str
    rules: str
    baseline: Baseline
    input_shape: tuple[int, ...]
    trace_method: str
    layers: tuple[Layer, ...]
    uncounted: tuple[Uncounted, ...] = field(metadata=column(then=("complete",)))
    warnings: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """Whether every node was counted: with any node uncounted the score is a lower bound
        and the --max-score gate fails unless the user accepts those ops."""
        return not self.uncounted

    def to_dict(self) -> dict[str, Any]:
        return record(self)
