"""Markdown: a summary and a table with every digit, fit for a pull-request comment or a CI job
summary."""

from __future__ import annotations

from micronet_score.report.changes import (
    change_cells,
    compare_notes,
    compare_totals,
    visible_changes,
)
from micronet_score.report.numbers import (
    format_exact,
    format_relative,
    format_score,
    format_shape,
    format_share,
    row_bits,
    sparsity_text,
)
from micronet_score.report.summary import summary_lines
from micronet_score.results import Report
from micronet_score.views import WHOLE, Comparison, Row, View, arrange, rows, total_row


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def hidden_note(hidden: int, total: int, top: int | None) -> str:
    return f"{hidden} of {total} rows not shown (--top {top}); the totals cover all of them"


def _cells(row: Row) -> str:
    fmt = f" {row.storage_format}" if row.storage_format not in ("", "dense") else ""
    return (f"{row.params:,} | {sparsity_text(row)} | {row_bits(row)} | "
            f"{format_exact(row.storage)}{fmt} | {format_exact(row.mults)} | "
            f"{format_exact(row.adds)} | {format_exact(row.ops)} | {format_share(row.share)} |")


def to_markdown(report: Report, view: View = WHOLE, width: int = 0) -> str:
    """The summary and the table (`view` shapes the rows). `width` is not used: Markdown is
    reflowed by whatever shows it."""
    all_rows = rows(report, view.depth)
    shown, hidden = arrange(all_rows, view.sort, view.top)
    lines = [
        "| layer | op | output | params | sparsity | bits w/a | storage | mults | adds | ops "
        "| share |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
        *(f"| `{_md(row.name)}` | {_md(row.op)} | {format_shape(row.output_shape)} | "
          + _cells(row) for row in shown),
        "| **total** | | | " + _cells(total_row(report, all_rows)),
    ]
    summary_list = summary_lines(report, view.max_score, allowed=view.allow_uncounted)
    summary = "\n".join(f"- {line.text}" for line in summary_list)
    note = f"\n_{hidden_note(hidden, len(all_rows), view.top)}._\n" if hidden else ""
    legend = ("_storage and ops in 32-bit equivalents; mults and adds are raw counts; "
              "bits are weights/activations; output shapes are per example, without the "
              "batch._")
    return (f"**MicroNet score: {format_score(report.score)}** "
            f"(params {format_score(report.params_score)} + ops {format_score(report.ops_score)}"
            f", baseline `{report.baseline.name}`)\n\n{summary}\n\n"
            + "\n".join(lines) + f"\n{note}\n{legend}\n")


def compare_markdown(comparison: Comparison, top: int | None = None, width: int = 0) -> str:
    """The totals side by side, then the rows that changed, largest change first."""
    shown, hidden, same = visible_changes(comparison, top)
    a, b = comparison.before, comparison.after
    head = (f"**MicroNet score: {format_score(a.score)} → {format_score(b.score)}"
            f"{format_relative(a.score, b.score)}** (baseline `{b.baseline.name}`, "
            f"rules {b.rules})")
    totals = ["| | A | B | change |", "|---|---:|---:|---:|"]
    totals += [f"| {label} | {va} | {vb} | {change} |"
               for label, va, vb, change in compare_totals(comparison)]
    table = ["| layer | change | params | storage | ops | bits w/a | sparsity | score change |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for change in shown:
        cells = change_cells(change, " → ")
        table.append(f"| `{_md(cells['layer'])}` | {cells['change']} | {cells['params']} | "
                     f"{cells['storage']} | {cells['ops']} | {cells['bits']} | "
                     f"{cells['sparsity']} | {cells['score']} |")
    notes = "\n".join(f"- {note.text}" for note in compare_notes(comparison, hidden, same, top))
    return "\n".join([head, "", *totals, "", notes, "", *table]) + "\n"
