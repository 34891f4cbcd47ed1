"""The terminal report: rich tables that fit the terminal's width, notes and the summary.

The `*_parts` functions return rich renderables for a terminal (colour, the CLI prints them);
`to_text` and `compare_text` give the same as plain text without trailing spaces, for pipes,
files and tests. Columns that do not fit are left out (a note says which), numbers are never cut,
layer names wrap after a dot, and the summary lines break between fields. rich is imported only
inside these functions.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from micronet_score.report.changes import (
    HEADERS,
    change_cells,
    compare_notes,
    compare_totals,
    visible_changes,
)
from micronet_score.report.markdown import hidden_note
from micronet_score.report.numbers import (
    format_count,
    format_shape,
    format_share,
    row_bits,
    share_bar,
    sparsity_text,
    storage_text,
)
from micronet_score.report.summary import INDENT, Line, summary_lines, words
from micronet_score.views import WHOLE, View, arrange, rows, total_row

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from micronet_score.results import Report
    from micronet_score.views import Comparison


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
_COMPARE_DROPS = ("sparsity", "bits", "params")


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


def _table(columns: list[_Column], name_width: int, styles: Sequence[str] = (),
           footer: bool = True) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE, show_edge=False, show_footer=footer, padding=(0, 1),
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


def _lines(lines: Sequence[Line], width: int, style: str = "", indent: int = INDENT) -> Text:
    """Lines reflowed to `width`, each in its own style (or `style`)."""
    from rich.text import Text

    text = Text()
    for line in lines:
        text.append(line.reflow(width, indent) + "\n", style=line.style or style)
    text.rstrip()
    return text


def _notes(notes: Sequence[Line | str], width: int) -> Text:
    """Dim lines under a table; a string is prose, broken between words."""
    lines = [note if isinstance(note, Line) else Line("", words(note)) for note in notes]
    return _lines(lines, width, "dim", indent=2)


def table_parts(report: Report, view: View = WHOLE, width: int = 100, unicode: bool = True
                ) -> list[RenderableType]:
    """The terminal report as rich renderables: the layer table, notes, then the summary.

    Print a `Table` as is and the `Text` parts with `soft_wrap=True` (their lines already fit
    `width`); columns that do not fit `width` are left out (mults and adds first), and a note
    says which."""
    from rich.text import Text

    all_rows = rows(report, view.depth)
    shown, hidden = arrange(all_rows, view.sort, view.top)
    heaviest = max((row.share for row in shown), default=0.0) or 1.0
    total = total_row(report, all_rows)
    share_width = max(len(format_share(row.share)) for row in (*shown, total))
    columns = [
        _Column("layer", "layer", tuple(row.name for row in shown), "total", right=False),
        _Column("op", "op", tuple(row.op for row in shown), right=False),
        _Column("output", "output", tuple(format_shape(r.output_shape) for r in shown),
                right=False),
        _Column("params", "params", tuple(format_count(r.params) for r in shown),
                format_count(total.params)),
        _Column("sparsity", "sparsity", tuple(sparsity_text(r) for r in shown),
                sparsity_text(total)),
        _Column("bits", "bits", tuple(row_bits(r) for r in shown), row_bits(total),
                right=False),
        _Column("storage", "storage", tuple(storage_text(r) for r in shown),
                format_count(total.storage)),
        _Column("mults", "mults", tuple(format_count(r.mults) for r in shown),
                format_count(total.mults)),
        _Column("adds", "adds", tuple(format_count(r.adds) for r in shown),
                format_count(total.adds)),
        _Column("ops", "ops", tuple(format_count(r.ops) for r in shown), format_count(total.ops)),
        _Column("share", "share", tuple(
            f"{format_share(row.share):>{share_width}} "
            f"{share_bar(row.share / heaviest, 8, unicode):<8}"
            for row in shown
        ), f"{format_share(total.share):>{share_width}}" + " " * 9, right=False,
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
        notes.append(hidden_note(hidden, len(all_rows), view.top))
    if dropped:
        notes.append(f"not shown at {width} columns: {', '.join(dropped)} (see --format csv)")
    return [
        _table(kept, name_width, styles),
        _notes(notes, width),
        Text(""),
        _lines(summary_lines(report, view.max_score, unicode, view.allow_uncounted), width),
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
    for label, va, vb, change in compare_totals(comparison):
        totals.add_row(label, va, vb, change, style="bold" if label == "score" else None)
    shown, hidden, same = visible_changes(comparison, top)
    arrow = "→" if unicode else "->"
    cells = [change_cells(change, arrow) for change in shown]
    score_styles = tuple("green" if c.score_change < 0 else "red" if c.score_change > 0 else ""
                         for c in shown)
    columns = [
        _Column(key, header, tuple(c[key] for c in cells), right=key not in ("layer", "change"),
                styles=score_styles if key == "score" else ())
        for key, header in HEADERS.items()
    ]
    kept, name_width = _fit(columns, width, _COMPARE_DROPS)
    notes: list[Line | str] = [*compare_notes(comparison, hidden, same, top)]
    dropped = [c.key for c in columns if c not in kept]
    if dropped:
        notes.append(f"not shown at {width} columns: {', '.join(dropped)}")
    changes = _table(kept, name_width, footer=False) if shown else Text("no layer changed")
    return [totals, _notes(notes, width), Text(""), changes]


def render_plain(parts: Sequence[RenderableType], width: int) -> str:
    """Rich renderables as plain text (no colour, no escape codes, no trailing spaces)."""
    from rich.console import Console
    from rich.text import Text

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      no_color=True, highlight=False, emoji=False, legacy_windows=False)
    for part in parts:
        console.print(part, soft_wrap=isinstance(part, Text))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def to_text(report: Report, view: View = WHOLE, width: int = 100) -> str:
    """The terminal report as plain text, `width` columns wide."""
    return render_plain(table_parts(report, view, width), width)


def compare_text(comparison: Comparison, top: int | None = None, width: int = 100) -> str:
    """The comparison as plain text, `width` columns wide."""
    return render_plain(compare_parts(comparison, top, width), width)
