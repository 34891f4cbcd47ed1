"""Views of a report: its layers as table rows (optionally summed by module-path prefix), the
rows that show, the nodes left uncounted grouped, and two reports compared row by row.

Plain data, no text: the renderers in `micronet_score.report` turn these into tables.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from micronet_score.results import Layer, Report, Uncounted, column, record

SORTS = ("order", "score")


@dataclass(frozen=True)
class View:
    """How the table and Markdown reports shape their rows; JSON and CSV always hold every layer.

    `depth` sums the layers under each module-path prefix of that many parts (None: one row per
    node); `sort` is "order" (graph order) or "score" (heaviest first); `top` keeps the N heaviest
    rows, in the chosen order; `max_score` adds the gate's verdict to the summary, and
    `allow_uncounted` lists the patterns of uncounted ops (fnmatch, on the op's name) that the
    gate accepts (see `blocking_uncounted`).
    """

    depth: int | None = None
    sort: str = "order"
    top: int | None = None
    max_score: float | None = None
    allow_uncounted: tuple[str, ...] = ()


WHOLE = View()  # every row, in graph order


@dataclass(frozen=True)
class Row:
    """One row of a table: one node's layers, or the sum of the layers under a module-path prefix.

    `storage` and `ops` are 32-bit equivalents (written out as `effective_params` and
    `effective_ops`, as a Layer's), `mults` and `adds` raw counts, `score` this row's part of the
    model's score, `share` that part over the score. `output_shape` is per example.
    """

    name: str
    op: str
    output_shape: tuple[int, ...]
    layers: int
    params: int
    zeros: int = field(metadata=column(then=("sparsity",)))
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    storage_format: str
    storage: float = field(metadata=column(key="effective_params"))
    mults: float = field(metadata=column(count=True))
    adds: float = field(metadata=column(count=True))
    ops: float = field(metadata=column(key="effective_ops"))
    share: float
    score: float

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return record(self)


def group_name(layer: Layer, depth: int | None) -> str:
    """The row a layer belongs to: its module path cut to `depth` parts. A node outside any module
    (a function called in the top-level forward) keeps its own row."""
    if depth is None or not layer.module:
        return layer.name
    return ".".join(layer.module.split(".")[:depth])


def rows(report: Report, depth: int | None = None) -> tuple[Row, ...]:
    """The report's layers as rows, in graph order; with `depth`, summed by module-path prefix.

    Without `depth` there is one row per node: the parameters of an uncounted module, charged
    one tensor at a time under the module's one name, make one row.
    """
    groups: dict[tuple[bool, str], list[Layer]] = {}
    for layer in report.layers:
        groups.setdefault((bool(layer.module), group_name(layer, depth)), []).append(layer)
    return tuple(
        _row(group_name(group[0], depth), group, report.score) for group in groups.values()
    )


def _row(name: str, group: list[Layer], score: float) -> Row:
    ops = {layer.op for layer in group}
    if len(group) == 1:
        op = group[0].op
    elif len(ops) == 1:
        op = f"{group[0].op} x{len(group)}"
    else:
        op = f"{len(group)} nodes"
    formats = {layer.storage_format for layer in group if layer.params and layer.storage_format}
    share = sum(layer.share for layer in group)
    return Row(
        name=name,
        op=op,
        output_shape=group[-1].output_shape,
        layers=len(group),
        params=sum(layer.params for layer in group),
        zeros=sum(round(layer.sparsity * layer.params) for layer in group),
        weight_bits=tuple(sorted({b for b in (la.weight_bits for la in group) if b is not None})),
        act_bits=tuple(sorted({layer.act_bits for layer in group})),
        storage_format=formats.pop() if len(formats) == 1 else "mixed" if formats else "",
        storage=sum(layer.effective_params for layer in group),
        mults=sum(layer.mults for layer in group),
        adds=sum(layer.adds for layer in group),
        ops=sum(layer.effective_ops for layer in group),
        share=share,
        score=share * score,
    )


def total_row(report: Report, all_rows: Sequence[Row]) -> Row:
    """The footer of a table: the whole model (totals from the report, not from shown rows)."""
    return Row(
        name="total",
        op="",
        output_shape=(),
        layers=len(report.layers),
        params=sum(r.params for r in all_rows),
        zeros=sum(r.zeros for r in all_rows),
        weight_bits=tuple(sorted({b for r in all_rows for b in r.weight_bits})),
        act_bits=tuple(sorted({b for r in all_rows for b in r.act_bits})),
        storage_format="",
        storage=report.params,
        mults=report.mults,
        adds=report.adds,
        ops=report.ops,
        share=sum(r.share for r in all_rows),
        score=report.score,
    )


def arrange(all_rows: Sequence[Row], sort: str = "order", top: int | None = None
            ) -> tuple[tuple[Row, ...], int]:
    """Keep the `top` heaviest rows (all when None), put them in `sort` order, and say how many
    were left out. Raises ValueError on a sort not in SORTS."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; valid: {', '.join(SORTS)}")
    by_weight = sorted(range(len(all_rows)), key=lambda i: (-all_rows[i].share, i))
    kept = set(by_weight if top is None else by_weight[:top])
    order = by_weight if sort == "score" else range(len(all_rows))
    shown = tuple(all_rows[i] for i in order if i in kept)
    return shown, len(all_rows) - len(shown)


@dataclass(frozen=True)
class UncountedGroup:
    """Uncounted nodes of one target in one module ("" outside any module), in graph order."""

    target: str
    module: str
    nodes: tuple[str, ...]


def blocking_uncounted(report: Report, allowed: Sequence[str] = ()) -> tuple[Uncounted, ...]:
    """The uncounted nodes the gate may not pass over: all but those whose op matches one of the
    `allowed` patterns. A score that leaves out work is no verdict unless the user accepts it."""
    return tuple(u for u in report.uncounted
                 if not any(fnmatch.fnmatchcase(u.target, p) for p in allowed))


def uncounted_groups(report: Report, nodes: Sequence[Uncounted] | None = None
                     ) -> tuple[UncountedGroup, ...]:
    """The report's uncounted nodes (or `nodes` of them) grouped by target and module path, in
    order of first node."""
    groups: dict[tuple[str, str], list[str]] = {}
    for node in report.uncounted if nodes is None else nodes:
        groups.setdefault((node.target, node.module), []).append(node.node)
    return tuple(UncountedGroup(target, module, tuple(nodes))
                 for (target, module), nodes in groups.items())


# --- Comparing two reports ------------------------------------------------------------------

@dataclass(frozen=True)
class RowChange:
    """A row matched by name across two reports; `before` or `after` is None for a row only in one
    of them ("added" / "removed"); else the status is "same" or "changed"."""

    name: str
    status: str
    before: Row | None
    after: Row | None

    @property
    def score_change(self) -> float:
        after = self.after.score if self.after else 0.0
        return after - (self.before.score if self.before else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "score_change": self.score_change,
            "a": self.before.to_dict() if self.before else None,
            "b": self.after.to_dict() if self.after else None,
        }


TOTALS = ("score", "params_score", "ops_score", "params", "ops")


@dataclass(frozen=True)
class Comparison:
    """Two reports (A and B, scored under the same rules and baseline) and their row changes,
    sorted by the size of the change in score, largest first."""

    before: Report
    after: Report
    labels: tuple[str, str]
    changes: tuple[RowChange, ...]

    def to_dict(self) -> dict[str, Any]:
        a, b = _totals_of(self.before), _totals_of(self.after)
        return {
            "a": {"model": self.labels[0], **a, "freebie": self.before.freebie},
            "b": {"model": self.labels[1], **b, "freebie": self.after.freebie},
            "change": {key: b[key] - a[key] for key in TOTALS},
            "rules": self.after.rules,
            "baseline": self.after.baseline.to_dict(),
            "layers": [change.to_dict() for change in self.changes],
        }


def _totals_of(report: Report) -> dict[str, float]:
    return {key: float(getattr(report, key)) for key in TOTALS}


def compare(before: Report, after: Report, labels: tuple[str, str] = ("A", "B"),
            depth: int | None = None) -> Comparison:
    """Match the rows of two reports by name (module path, or prefix with `depth`)."""
    rows_a, rows_b = _unique(rows(before, depth)), _unique(rows(after, depth))
    changes = []
    for name in [*rows_a, *(n for n in rows_b if n not in rows_a)]:
        a, b = rows_a.get(name), rows_b.get(name)
        if a is None:
            status = "added"
        elif b is None:
            status = "removed"
        else:
            status = "same" if _same(a, b) else "changed"
        changes.append(RowChange(name, status, a, b))
    changes.sort(key=lambda c: -abs(c.score_change))
    return Comparison(before, after, labels, tuple(changes))


def _unique(all_rows: Sequence[Row]) -> dict[str, Row]:
    """Rows by name; a repeated name (rare: a top-level node named like a module) gets #2, #3."""
    named: dict[str, Row] = {}
    for row in all_rows:
        name, n = row.name, 1
        while name in named:
            n += 1
            name = f"{row.name}#{n}"
        named[name] = row
    return named


def _same(a: Row, b: Row) -> bool:
    keys = ("params", "zeros", "weight_bits", "act_bits", "storage", "mults", "adds", "ops")
    return all(getattr(a, key) == getattr(b, key) for key in keys)
