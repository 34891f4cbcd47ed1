"""What a comparison shows, as text: the totals side by side and one row of cells per change.
Shared by the terminal table and the Markdown, so both show the same figures.

A row whose figures differ shows `before→after` in each cell that differs, with as many digits as
it takes to tell the two apart (13.0K becomes 13,025→13,030). A row marked changed whose every
shown cell still reads the same (only its mults and adds moved, or its bits within the same
range) says so: `changed (below display precision)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from micronet_score.report.numbers import (
    format_count,
    format_exact,
    format_full,
    format_percent,
    format_percent_digits,
    format_relative,
    format_score,
    format_score_change,
    format_signed,
    row_bits,
)
from micronet_score.report.summary import Line, words
from micronet_score.views import Row

if TYPE_CHECKING:
    from micronet_score.results import Report
    from micronet_score.views import Comparison, RowChange

Format = Callable[[float], str]
COUNTS: tuple[Format, ...] = (format_count, format_exact, format_full)
PERCENTS: tuple[Format, ...] = (
    format_percent, *(partial(format_percent_digits, digits=d) for d in (1, 2, 4, 6))
)
BELOW_PRECISION = "changed (below display precision)"
HEADERS = {"layer": "layer", "change": "change", "params": "params", "storage": "storage",
           "ops": "ops", "bits": "bits w/a", "sparsity": "sparsity", "score": "score change"}


def _raw_params(report: Report) -> float:
    return float(sum(layer.params for layer in report.layers))


_TOTALS: tuple[tuple[str, Callable[[Report], float], Format], ...] = (
    ("score", lambda r: r.score, format_score),
    ("params part", lambda r: r.params_score, format_score),
    ("ops part", lambda r: r.ops_score, format_score),
    ("params", _raw_params, format_exact),
    ("storage (32-bit eq.)", lambda r: r.params, format_exact),
    ("ops (32-bit eq.)", lambda r: r.ops, format_exact),
)


def compare_totals(comparison: Comparison) -> list[tuple[str, str, str, str]]:
    """(label, A, B, change with the relative change) for the score, its parts, the parameters
    (raw count), the storage and the ops (32-bit equivalents)."""
    lines = []
    for label, value, fmt in _TOTALS:
        va, vb = value(comparison.before), value(comparison.after)
        change = format_signed(vb - va, fmt(vb - va)) + format_relative(va, vb)
        lines.append((label, fmt(va), fmt(vb), change))
    return lines


def distinct(before: float, after: float, formats: Sequence[Format]) -> tuple[str, str]:
    """The two values in the first of `formats` that tells them apart; equal values, and values
    no format tells apart, in the first."""
    if before != after:
        for fmt in formats:
            if fmt(before) != fmt(after):
                return fmt(before), fmt(after)
    return formats[0](before), formats[0](after)


def _sparsity(row: Row) -> float | None:
    return row.sparsity if row.params else None


def change_cells(change: RowChange, arrow: str) -> dict[str, str]:
    """The cells of one change, keyed as HEADERS; `change` holds the status as shown."""
    a, b = change.before, change.after
    cells = {"layer": change.name, "score": format_score_change(change.score_change)}
    moved = False
    for key, value, formats in (("params", lambda r: float(r.params), COUNTS),
                                ("storage", lambda r: r.storage, COUNTS),
                                ("ops", lambda r: r.ops, COUNTS),
                                ("sparsity", _sparsity, PERCENTS)):
        va, vb = (value(a) if a else None), (value(b) if b else None)
        ta: str | None = formats[0](va) if va is not None else None
        tb: str | None = formats[0](vb) if vb is not None else None
        if va is not None and vb is not None:
            ta, tb = distinct(va, vb, formats)
        cells[key], differs = _cell(ta, tb, arrow, both=a is not None and b is not None)
        moved = moved or differs
    cells["bits"], differs = _cell(row_bits(a) if a else None, row_bits(b) if b else None, arrow,
                                   both=a is not None and b is not None)
    moved = moved or differs
    shown = BELOW_PRECISION if change.status == "changed" and not moved else change.status
    return {"change": shown, **cells}


def _cell(before: str | None, after: str | None, arrow: str, both: bool) -> tuple[str, bool]:
    """`before→after` where they differ; one side for a row only in one report."""
    if not both:
        return (before if before is not None else after) or "", False
    if before == after:
        return before or "", False
    return f"{before or ''}{arrow}{after or ''}", True


def visible_changes(comparison: Comparison, top: int | None) -> tuple[list[RowChange], int, int]:
    """The changes to list (the `top` largest), how many changed rows are left out, and how many
    rows did not change."""
    changed = [c for c in comparison.changes if c.status != "same"]
    same = len(comparison.changes) - len(changed)
    shown = changed if top is None else changed[:top]
    return shown, len(changed) - len(shown), same


def compare_notes(comparison: Comparison, hidden: int, same: int, top: int | None
                  ) -> list[Line]:
    """The lines under the totals: which file is A and B (a path is never broken), the units,
    and the rows not listed."""
    notes = [Line(f"{label}:", (path,)) for label, path in zip("AB", comparison.labels,
                                                                 strict=True)]
    notes.append(Line("", words("params are raw counts; storage and ops are 32-bit "
                                "equivalents")))
    if hidden:
        notes.append(Line("", words(f"{hidden} more changed rows not shown (--top {top})")))
    if same:
        notes.append(Line("", words(f"{same} unchanged rows not shown")))
    return notes
