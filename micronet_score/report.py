"""The result of an analysis, and the only module that turns numbers into text.

Kept free of torch so that reports can be loaded, compared and formatted cheaply; rich is imported
only by the functions that build terminal tables.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from micronet_score.rules import Baseline

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text


@dataclass(frozen=True)
class Layer:
    """One counted node. Raw counts (`params`, `mults`, `adds`) and 32-bit equivalents."""

    name: str
    node: str
    module: str
    op: str
    target: str
    output_shape: tuple[int, ...]
    params: int
    weight_bits: int | None
    act_bits: int
    sparsity: float
    storage_format: str
    storage_bits: float
    mults: float
    adds: float
    effective_ops: float
    share: float
    note: str

    @property
    def effective_params(self) -> float:
        return self.storage_bits / 32

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node": self.node,
            "module": self.module,
            "op": self.op,
            "target": self.target,
            "output_shape": list(self.output_shape),
            "params": self.params,
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits,
            "sparsity": self.sparsity,
            "storage_format": self.storage_format,
            "storage_bits": _number(self.storage_bits),
            "mults": _number(self.mults),
            "adds": _number(self.adds),
            "effective_params": self.effective_params,
            "effective_ops": self.effective_ops,
            "share": self.share,
            "note": self.note,
        }


@dataclass(frozen=True)
class Uncounted:
    """A node no rule covers. It is reported, never silently dropped."""

    node: str
    target: str
    module: str

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "target": self.target, "module": self.module}


@dataclass(frozen=True)
class Report:
    score: float
    params_score: float
    ops_score: float
    params: float
    ops: float
    mults: float
    adds: float
    freebie: bool
    freebie_reason: str
    rules: str
    baseline: Baseline
    input_shape: tuple[int, ...]
    trace_method: str
    layers: tuple[Layer, ...]
    uncounted: tuple[Uncounted, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "params_score": self.params_score,
            "ops_score": self.ops_score,
            "params": self.params,
            "ops": self.ops,
            "mults": _number(self.mults),
            "adds": _number(self.adds),
            "freebie": self.freebie,
            "freebie_reason": self.freebie_reason,
            "rules": self.rules,
            "baseline": self.baseline.to_dict(),
            "input_shape": list(self.input_shape),
            "trace_method": self.trace_method,
            "layers": [layer.to_dict() for layer in self.layers],
            "uncounted": [node.to_dict() for node in self.uncounted],
            "warnings": list(self.warnings),
        }


def _number(value: float) -> float | int:
    """Whole counts print as integers in machine formats."""
    return int(value) if float(value).is_integer() else value


# --- Rows: the layers as the tables show them, optionally summed by module-path prefix ---------

SORTS = ("order", "score")


@dataclass(frozen=True)
class View:
    """How the table and Markdown reports shape their rows; JSON and CSV always hold every layer.

    `depth` sums the layers under each module-path prefix of that many parts (None: one row per
    layer); `sort` is "order" (graph order) or "score" (heaviest first); `top` keeps the N heaviest
    rows, in the chosen order; `max_score` adds the gate's verdict to the summary.
    """

    depth: int | None = None
    sort: str = "order"
    top: int | None = None
    max_score: float | None = None


@dataclass(frozen=True)
class Row:
    """One row of a table: a single layer, or the sum of the layers under a module-path prefix.

    `storage` and `ops` are 32-bit equivalents, `mults` and `adds` raw counts, `score` this row's
    part of the model's score, `share` that part over the score.
    """

    name: str
    op: str
    output_shape: tuple[int, ...]
    layers: int
    params: int
    zeros: int
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    storage_format: str
    storage: float
    mults: float
    adds: float
    ops: float
    share: float
    score: float

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "output_shape": list(self.output_shape),
            "layers": self.layers,
            "params": self.params,
            "sparsity": self.sparsity,
            "weight_bits": list(self.weight_bits),
            "act_bits": list(self.act_bits),
            "storage_format": self.storage_format,
            "effective_params": self.storage,
            "mults": _number(self.mults),
            "adds": _number(self.adds),
            "effective_ops": self.ops,
            "share": self.share,
            "score": self.score,
        }


def group_name(layer: Layer, depth: int | None) -> str:
    """The row a layer belongs to: its module path cut to `depth` parts. A node outside any module
    (a function called in the top-level forward) keeps its own row."""
    if depth is None or not layer.module:
        return layer.name
    return ".".join(layer.module.split(".")[:depth])


def rows(report: Report, depth: int | None = None) -> tuple[Row, ...]:
    """The report's layers as rows, in graph order; with `depth`, summed by module-path prefix."""
    groups: dict[tuple[bool, str], list[Layer]] = {}
    for index, layer in enumerate(report.layers):
        key = (bool(layer.module), group_name(layer, depth)) if depth else (True, str(index))
        groups.setdefault(key, []).append(layer)
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


def arrange(all_rows: Sequence[Row], sort: str = "order", top: int | None = None
            ) -> tuple[tuple[Row, ...], int]:
    """Keep the `top` heaviest rows (all when None), put them in `sort` order, and say how many
    were left out."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; valid: {', '.join(SORTS)}")
    by_weight = sorted(range(len(all_rows)), key=lambda i: (-all_rows[i].share, i))
    kept = set(by_weight if top is None else by_weight[:top])
    order = by_weight if sort == "score" else range(len(all_rows))
    shown = tuple(all_rows[i] for i in order if i in kept)
    return shown, len(all_rows) - len(shown)


# --- Comparing two reports ------------------------------------------------------------------

@dataclass(frozen=True)
class RowChange:
    """A row matched by name across two reports; `before` or `after` is None for a row only in one
    of them ("added" / "removed")."""

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


@dataclass(frozen=True)
class Comparison:
    """Two reports (A and B, scored under the same rules and baseline) and their row changes,
    sorted by the size of the change in score, largest first."""

    before: Report
    after: Report
    labels: tuple[str, str]
    changes: tuple[RowChange, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": _totals(self.before, self.labels[0]),
            "b": _totals(self.after, self.labels[1]),
            "change": {
                key: value_b - value_a
                for key, value_a, value_b in zip(
                    _TOTALS, _totals_of(self.before), _totals_of(self.after), strict=True
                )
            },
            "rules": self.after.rules,
            "baseline": self.after.baseline.to_dict(),
            "layers": [change.to_dict() for change in self.changes],
        }


_TOTALS = ("score", "params_score", "ops_score", "params", "ops")


def _totals_of(report: Report) -> tuple[float, ...]:
    return tuple(float(getattr(report, key)) for key in _TOTALS)


def _totals(report: Report, label: str) -> dict[str, Any]:
    return {"model": label, **dict(zip(_TOTALS, _totals_of(report), strict=True)),
            "freebie": report.freebie}


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


# --- Numbers as text ------------------------------------------------------------------------

def format_count(value: float) -> str:
    """Short human form with three significant digits: 1.23M, 45.6K, 789, 12.5."""
    if abs(value) < 999.95:
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    for threshold, suffix in ((1e3, "K"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        scaled = value / threshold
        digits = 2 if abs(scaled) < 9.995 else 1 if abs(scaled) < 99.95 else 0
        text = f"{scaled:.{digits}f}"
        if abs(float(text)) < 1000 or suffix == "T":
            return text + suffix
    raise AssertionError("unreachable")


def format_exact(value: float) -> str:
    """Every digit, with thousands separators: 1,234,567 or 1,234.25."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def format_percent(fraction: float) -> str:
    """A whole percentage that never rounds a non-zero fraction to 0% or a partial one to 100%."""
    if fraction <= 0:
        return "0%"
    if fraction < 0.01:
        return "<1%"
    if fraction >= 1:
        return "100%"
    if fraction > 0.99:
        return ">99%"
    return f"{fraction:.0%}"


def format_score(value: float) -> str:
    """Six decimals; a score too small for them (a toy model) with four significant digits."""
    return f"{value:.6f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.4g}"


def format_score_change(value: float) -> str:
    """Signed, six decimals; a change too small for them in scientific notation, never -0.000000."""
    if value == 0:
        return "0"
    return f"{value:+.6f}" if abs(value) >= 5e-7 else f"{value:+.1e}"


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def output_label(row: Row) -> str:
    """The output shape without the batch dimension (tables count at batch size 1)."""
    shape = row.output_shape
    return format_shape(shape[1:] if len(shape) > 1 else shape)


def bits_label(layer: Layer) -> str:
    return f"{layer.weight_bits if layer.weight_bits is not None else '-'}/{layer.act_bits}"


def _bits_range(values: Sequence[int]) -> str:
    if not values:
        return "-"
    return str(values[0]) if len(values) == 1 else f"{min(values)}..{max(values)}"


def row_bits(row: Row) -> str:
    """Weights/activations; a range such as 8..32 when the summed layers differ."""
    return f"{_bits_range(row.weight_bits)}/{_bits_range(row.act_bits)}"


_FORMAT_LABELS = {"dense": "", "sparse": "sparse", "kernel_mask": "kernel", "filter_mask": "filter"}


def _storage_text(row: Row) -> str:
    label = _FORMAT_LABELS.get(row.storage_format, row.storage_format)
    return f"{format_count(row.storage)} {label}" if label else format_count(row.storage)


def _sparsity_text(row: Row) -> str:
    return format_percent(row.sparsity) if row.params else ""


_EIGHTHS = " ▏▎▍▌▋▊▉"


def share_bar(fraction: float, width: int = 8, unicode: bool = True) -> str:
    """A bar `width` characters long at fraction 1, drawn in eighths of a block (or '#')."""
    fraction = min(max(fraction, 0.0), 1.0)
    if not unicode:
        return "#" * round(fraction * width)
    full, part = divmod(round(fraction * width * 8), 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def gate(score: float, max_score: float) -> tuple[bool, str]:
    """The --max-score verdict and its one line: PASS at or under the bar, FAIL above it. The score
    shows as many digits as it takes to differ from the bar."""
    passed = score <= max_score
    shown, digits = format_score(score), 6
    while score != max_score and digits < 17 and f"{score:.{digits}f}" == f"{max_score:.{digits}f}":
        digits += 1
        shown = f"{score:.{digits}f}"
    if passed:
        return True, f"PASS: score {shown} is at or under --max-score {max_score:g}"
    return False, f"FAIL: score {shown} is above --max-score {max_score:g}"


def warning_lines(report: Report) -> list[str]:
    lines = []
    if report.uncounted:
        names = ", ".join(f"{u.node} ({u.target})" for u in report.uncounted[:5])
        more = f" and {len(report.uncounted) - 5} more" if len(report.uncounted) > 5 else ""
        lines.append(f"warning: {len(report.uncounted)} node(s) not counted: {names}{more}")
    lines.extend(f"warning: {w}" for w in report.warnings)
    return lines


def strict_failure(report: Report) -> str:
    return f"{len(report.uncounted)} node(s) not counted (--strict); see 'uncounted' in the report"


def summary_lines(report: Report, max_score: float | None = None) -> list[str]:
    """The few lines that answer "what does it cost and how does it compare"."""
    base = report.baseline
    freebie = "applied" if report.freebie else "not applied"
    lines = [
        f"params part: {format_exact(report.params)} / {format_exact(base.params)} = "
        f"{format_score(report.params_score)}  (stored values in 32-bit equivalents)",
        f"ops part:    {format_exact(report.ops)} / {format_exact(base.ops)} = "
        f"{format_score(report.ops_score)}  (operations in 32-bit equivalents)",
        f"score:       {format_score(report.score)}  (lower is better)",
        f"baseline:    {base.name}, {base.model} on {base.dataset}: "
        f"{format_exact(base.params)} params, {format_exact(base.ops)} ops ({base.quality})",
        f"rule set:    {report.rules}; input 1x{format_shape(report.input_shape)}, traced with "
        f"{report.trace_method}",
        f"16-bit freebie: {freebie} ({report.freebie_reason})",
        *warning_lines(report),
    ]
    if max_score is not None:
        passed = gate(report.score, max_score)[0]
        verdict = "at or under" if passed else "above"
        lines.append(f"gate:        {'PASS' if passed else 'FAIL'}, the score is {verdict} "
                     f"--max-score {max_score:g}")
    return lines


def rules_listing(rule_sets: Sequence[tuple[str, str, str]], baselines: Sequence[Baseline]
                  ) -> list[str]:
    """`micronet-score rules`: (name, description, default baseline) per rule set, then the
    baselines with their figures."""
    lines = ["Rule sets:"]
    lines += [f"  {name:<18} {description} (default baseline {default})"
              for name, description, default in rule_sets]
    lines.append("Baselines:")
    for base in baselines:
        shape = format_shape(base.input_shape) if base.input_shape else "none"
        lines.append(
            f"  {base.name:<18} {base.model} on {base.dataset}: params {base.params:,.0f}, "
            f"ops {base.ops:,.0f}, input {shape}, bar {base.quality}"
        )
    return lines


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


CSV_COLUMNS = (
    "name", "module", "op", "target", "output_shape", "params", "weight_bits", "act_bits",
    "sparsity", "storage_format", "effective_params", "mults", "adds", "effective_ops", "share",
    "note",
)


def to_csv(report: Report) -> str:
    """One row per layer, whatever the view."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for layer in report.layers:
        row = layer.to_dict()
        row["output_shape"] = format_shape(layer.output_shape)
        writer.writerow(row[column] for column in CSV_COLUMNS)
    return buffer.getvalue()


# --- Markdown -------------------------------------------------------------------------------

def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _hidden_note(hidden: int, total: int, top: int | None) -> str:
    return (f"{hidden} of {total} rows not shown (--top {top}); the totals cover all of them")


def to_markdown(report: Report, view: View = View()) -> str:
    """A summary and a table, fit for a pull-request comment."""
    all_rows = rows(report, view.depth)
    shown, hidden = arrange(all_rows, view.sort, view.top)
    header = (
        "| layer | op | output | params | sparsity | bits w/a | storage | mults | adds | ops "
        "| share |\n|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| `{_md(row.name)}` | {_md(row.op)} | {output_label(row)} | "
        f"{row.params:,} | {_sparsity_text(row)} | {row_bits(row)} | {format_exact(row.storage)}"
        f"{' ' + row.storage_format if row.storage_format not in ('', 'dense') else ''} | "
        f"{format_exact(row.mults)} | {format_exact(row.adds)} | {format_exact(row.ops)} | "
        f"{row.share:.1%} |"
        for row in shown
    ]
    total = _total_row(report, all_rows)
    lines.append(
        f"| **total** | | | {total.params:,} | {_sparsity_text(total)} | {row_bits(total)} | "
        f"{format_exact(total.storage)} | {format_exact(total.mults)} | "
        f"{format_exact(total.adds)} | {format_exact(total.ops)} | {total.share:.1%} |"
    )
    summary = "\n".join(f"- {line}" for line in summary_lines(report, view.max_score))
    note = f"\n_{_hidden_note(hidden, len(all_rows), view.top)}._\n" if hidden else ""
    legend = ("_storage and ops in 32-bit equivalents; mults and adds are raw counts; "
              "bits are weights/activations._")
    return (f"**MicroNet score: {format_score(report.score)}** "
            f"(params {format_score(report.params_score)} + ops {format_score(report.ops_score)}"
            f", baseline `{report.baseline.name}`)\n\n{summary}\n\n{header}\n"
            + "\n".join(lines) + f"\n{note}\n{legend}\n")


def _total_row(report: Report, all_rows: Sequence[Row]) -> Row:
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


def _change_cell(before: str | None, after: str | None, arrow: str) -> str:
    if before is None:
        return after or ""
    if after is None or after == before:
        return before
    return f"{before}{arrow}{after}"


def _relative(before: float, after: float) -> str:
    if before == 0:
        return ""
    return f" ({(after - before) / before:+.1%})"


_COMPARE_LINES = (
    ("score", "score", format_score),
    ("params part", "params_score", format_score),
    ("ops part", "ops_score", format_score),
    ("params (32-bit eq.)", "params", format_exact),
    ("ops (32-bit eq.)", "ops", format_exact),
)


def _compare_totals(comparison: Comparison) -> list[tuple[str, str, str, str]]:
    a, b = comparison.before, comparison.after
    lines = []
    for label, key, fmt in _COMPARE_LINES:
        va, vb = float(getattr(a, key)), float(getattr(b, key))
        sign = "+" if vb - va > 0 else ""
        lines.append((label, fmt(va), fmt(vb), f"{sign}{fmt(vb - va)}{_relative(va, vb)}"))
    return lines


def _change_cells(change: RowChange, arrow: str) -> dict[str, str]:
    a, b = change.before, change.after

    def pick(fmt: Callable[[Row], str]) -> str:
        return _change_cell(fmt(a) if a else None, fmt(b) if b else None, arrow)

    return {
        "layer": change.name,
        "change": change.status,
        "params": pick(lambda r: format_count(r.params)),
        "ops": pick(lambda r: format_count(r.ops)),
        "bits": pick(row_bits),
        "sparsity": pick(_sparsity_text),
        "score": format_score_change(change.score_change),
    }


def _visible_changes(comparison: Comparison, top: int | None) -> tuple[list[RowChange], int, int]:
    changed = [c for c in comparison.changes if c.status != "same"]
    same = len(comparison.changes) - len(changed)
    shown = changed if top is None else changed[:top]
    return shown, len(changed) - len(shown), same


def _compare_notes(comparison: Comparison, hidden: int, same: int, top: int | None) -> list[str]:
    notes = [f"{label}: {path}" for label, path in zip("AB", comparison.labels, strict=True)]
    if hidden:
        notes.append(f"{hidden} more changed rows not shown (--top {top})")
    if same:
        notes.append(f"{same} unchanged rows not shown")
    return notes


def compare_markdown(comparison: Comparison, top: int | None = None) -> str:
    shown, hidden, same = _visible_changes(comparison, top)
    a, b = comparison.before, comparison.after
    head = (f"**MicroNet score: {format_score(a.score)} → {format_score(b.score)}"
            f"{_relative(a.score, b.score)}** (baseline `{b.baseline.name}`, rules {b.rules})")
    totals = ["| | A | B | change |", "|---|---:|---:|---:|"]
    totals += [f"| {label} | {va} | {vb} | {change} |"
               for label, va, vb, change in _compare_totals(comparison)]
    table = ["| layer | change | params | ops | bits w/a | sparsity | score change |",
             "|---|---|---:|---:|---|---:|---:|"]
    for change in shown:
        cells = _change_cells(change, " → ")
        table.append(f"| `{_md(cells['layer'])}` | {cells['change']} | {cells['params']} | "
                     f"{cells['ops']} | {cells['bits']} | {cells['sparsity']} | "
                     f"{cells['score']} |")
    notes = "\n".join(f"- {note}" for note in _compare_notes(comparison, hidden, same, top))
    return "\n".join([head, "", *totals, "", notes, "", *table]) + "\n"


def compare_json(comparison: Comparison) -> str:
    return json.dumps(comparison.to_dict(), indent=2)


# --- Terminal tables (rich) -----------------------------------------------------------------

@dataclass(frozen=True)
class _Column:
    key: str
    header: str
    cells: tuple[str, ...]
    footer: str = ""
    right: bool = True
    styles: tuple[str, ...] = ()  # one per cell; the colour a terminal shows

    @property
    def width(self) -> int:
        return max(len(text) for text in (self.header, self.footer, *self.cells))


_GAP = 2  # characters between two columns of the tables below
_NAME_MIN = 16  # a layer column narrower than this (or than its longest name) drops columns
_LAYER_DROPS = ("mults", "adds", "output", "op", "sparsity")
_LAYER_DROPS_DENSE = ("mults", "adds", "sparsity", "output", "op")
_COMPARE_DROPS = ("sparsity", "bits")


def _fit(columns: list[_Column], width: int, drops: Sequence[str]) -> tuple[list[_Column], int]:
    """Leave out the least important columns until the others fit `width` next to a layer column
    wide enough to read; returns the columns kept and the width left for the layer names."""
    names = columns[0]
    kept = list(columns)

    def room(cols: list[_Column]) -> int:
        return width - sum(c.width for c in cols[1:]) - _GAP * (len(cols) - 1)

    for key in drops:
        if room(kept) >= min(names.width, _NAME_MIN):
            break
        kept = [c for c in kept if c.key != key]
    return kept, max(1, min(names.width, room(kept)))


def wrap_name(name: str, width: int) -> str:
    """Break a module path after dots (or slashes) so that no line is wider than `width`."""
    if len(name) <= width:
        return name
    lines, current = [], ""
    for part in re.findall(r"[^./]*[./]|[^./]+$", name):
        if current and len(current) + len(part) > width:
            lines.append(current)
            current = ""
        while len(part) > width:
            lines.append(part[:width])
            part = part[width:]
        current += part
    if current:
        lines.append(current)
    return "\n".join(lines)


def _table(columns: list[_Column], name_width: int, styles: Sequence[str] = ()) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE, show_edge=False, show_footer=True, padding=(0, 1),
                  pad_edge=False, collapse_padding=True)
    for column in columns:
        is_name = column is columns[0]
        table.add_column(
            column.header,
            footer=column.footer,
            justify="right" if column.right else "left",
            no_wrap=not is_name,
            overflow="fold" if is_name else "ellipsis",
            width=name_width if is_name else None,
        )
    for index in range(len(columns[0].cells)):
        cells: list[Text | str] = [
            Text(c.cells[index], style=c.styles[index]) if c.styles else c.cells[index]
            for c in columns
        ]
        cells[0] = wrap_name(columns[0].cells[index], name_width)
        table.add_row(*cells, style=styles[index] if index < len(styles) else None)
    return table


def _summary_text(lines: Sequence[str]) -> Text:
    from rich.text import Text

    text = Text()
    for line in lines:
        style = ("bold" if line.startswith("score:") else "yellow" if line.startswith("warning")
                 else "bold green" if line.startswith("gate:        PASS") else "bold red"
                 if line.startswith("gate:        FAIL") else "")
        text.append(line + "\n", style=style)
    text.rstrip()
    return text


def table_parts(report: Report, view: View = View(), width: int = 100, unicode: bool = True
                ) -> list[RenderableType]:
    """The terminal report as rich renderables: the layer table, notes, then the summary.

    Print a `Table` as is and the `Text` parts with `soft_wrap=True`; columns that do not fit
    `width` are left out (mults and adds first), and a note says which."""
    from rich.text import Text

    all_rows = rows(report, view.depth)
    shown, hidden = arrange(all_rows, view.sort, view.top)
    heaviest = max((row.share for row in shown), default=0.0) or 1.0
    total = _total_row(report, all_rows)
    share_width = max(len(f"{row.share:.1%}") for row in (*shown, total))
    columns = [
        _Column("layer", "layer", tuple(row.name for row in shown), "total", right=False),
        _Column("op", "op", tuple(row.op for row in shown), right=False),
        _Column("output", "output", tuple(output_label(r) for r in shown),
                right=False),
        _Column("params", "params", tuple(format_count(r.params) for r in shown),
                format_count(total.params)),
        _Column("sparsity", "sparsity", tuple(_sparsity_text(r) for r in shown),
                _sparsity_text(total)),
        _Column("bits", "bits", tuple(row_bits(r) for r in shown), row_bits(total),
                right=False),
        _Column("storage", "storage", tuple(_storage_text(r) for r in shown),
                format_count(total.storage)),
        _Column("mults", "mults", tuple(format_count(r.mults) for r in shown),
                format_count(total.mults)),
        _Column("adds", "adds", tuple(format_count(r.adds) for r in shown),
                format_count(total.adds)),
        _Column("ops", "ops", tuple(format_count(r.ops) for r in shown), format_count(total.ops)),
        _Column("share", "share", tuple(
            f"{row.share:>{share_width}.1%} {share_bar(row.share / heaviest, 8, unicode):<8}"
            for row in shown
        ), f"{total.share:>{share_width}.1%}" + " " * 9, right=False,
                styles=tuple("cyan" for _ in shown)),
    ]
    # A sparsity column of nothing but 0% says no more than its total: it goes first.
    dense = all(cell in ("", "0%") for cell in columns[4].cells)
    kept, name_width = _fit(columns, width, _LAYER_DROPS_DENSE if dense else _LAYER_DROPS)
    styles = ["bold" if row.share >= 0.1 and len(shown) > 1 else "" for row in shown]
    dropped = [c.key for c in columns if c not in kept]
    raw = "" if "mults" in dropped else "; mults and adds are raw counts"
    notes = [f"storage and ops in 32-bit equivalents; bits are weights/activations{raw}"]
    if hidden:
        notes.append(_hidden_note(hidden, len(all_rows), view.top))
    if dropped:
        notes.append(f"not shown at {width} columns: {', '.join(dropped)} (see --format csv)")
    return [
        _table(kept, name_width, styles),
        Text("\n".join(notes), style="dim"),
        Text(""),
        _summary_text(summary_lines(report, view.max_score)),
    ]


def compare_parts(comparison: Comparison, top: int | None = None, width: int = 100,
                  unicode: bool = True) -> list[RenderableType]:
    """The comparison as rich renderables: totals side by side, then the rows that changed."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    totals = Table(box=box.SIMPLE, show_edge=False, padding=(0, 1), pad_edge=False,
                   collapse_padding=True)
    for header in ("", "A", "B", "change"):
        totals.add_column(header, justify="left" if not header else "right", no_wrap=True)
    for label, va, vb, change in _compare_totals(comparison):
        totals.add_row(label, va, vb, change, style="bold" if label == "score" else None)
    shown, hidden, same = _visible_changes(comparison, top)
    arrow = "→" if unicode else "->"
    cells = [_change_cells(change, arrow) for change in shown]
    score_styles = tuple("green" if c.score_change < 0 else "red" if c.score_change > 0 else ""
                         for c in shown)
    headers = {"layer": "layer", "change": "change", "params": "params", "ops": "ops",
               "bits": "bits w/a", "sparsity": "sparsity", "score": "score change"}
    columns = [
        _Column(key, header, tuple(c[key] for c in cells), right=key not in ("layer", "change"),
                styles=score_styles if key == "score" else ())
        for key, header in headers.items()
    ]
    kept, name_width = _fit(columns, width, _COMPARE_DROPS)
    notes = _compare_notes(comparison, hidden, same, top)
    dropped = [c.key for c in columns if c not in kept]
    if dropped:
        notes.append(f"not shown at {width} columns: {', '.join(dropped)}")
    changes = _table(kept, name_width) if shown else Text("no layer changed")
    if isinstance(changes, Table):
        changes.show_footer = False
    return [totals, Text("\n".join(notes), style="dim"), Text(""), changes]


def render_plain(parts: Sequence[RenderableType], width: int) -> str:
    """Rich renderables as plain text (no colour, no escape codes), for files and tests."""
    from rich.console import Console
    from rich.text import Text

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      no_color=True, highlight=False, emoji=False, legacy_windows=False)
    for part in parts:
        console.print(part, soft_wrap=isinstance(part, Text))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def to_text(report: Report, view: View = View(), width: int = 100) -> str:
    """The terminal report as plain text."""
    return render_plain(table_parts(report, view, width), width)
