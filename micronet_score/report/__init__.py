"""Reports as text: one renderer per output format, registered in FORMATS.

The command line's `--format` choices for `score` and `compare` are built from FORMATS, so a new
format is one entry here. A renderer turns a `results.Report` (or a `views.Comparison`) into
text; `numbers` is the only module that formats numbers. Importing this package costs neither
torch nor rich: rich is imported when a terminal table is drawn, an HTML page's libraries when a
page is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from micronet_score.report.csv_format import to_csv
from micronet_score.report.json_format import compare_json, to_json
from micronet_score.report.markdown import compare_markdown, to_markdown
from micronet_score.report.summary import gate, rules_listing, strict_failure, warning_lines
from micronet_score.report.table import (
    compare_parts,
    compare_text,
    render_plain,
    table_parts,
    to_text,
)
from micronet_score.results import Report
from micronet_score.views import Comparison, View

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = [
    "FORMATS", "Renderer", "compare_formats", "compare_json", "compare_markdown",
    "compare_parts", "compare_text", "gate", "render_plain", "rules_listing", "score_formats",
    "strict_failure", "table_parts", "to_csv", "to_json", "to_markdown", "to_text",
    "warning_lines",
]


@dataclass(frozen=True)
class Renderer:
    """One output format.

    `score(report, view, width)` is the report as text (`view` shapes the rows of formats that
    show a view, `width` is the width of formats laid out for a terminal); `compare(comparison,
    top, width)` the comparison, or None where the format has none. `score_parts` and
    `compare_parts(…, unicode)` give rich renderables to print in colour on a terminal (the table
    only). `view` says whether --depth, --sort and --top shape the report.
    """

    help: str
    score: Callable[[Report, View, int], str]
    compare: Callable[[Comparison, int | None, int], str] | None = None
    score_parts: Callable[[Report, View, int, bool], Sequence[RenderableType]] | None = None
    compare_parts: (
        Callable[[Comparison, int | None, int, bool], Sequence[RenderableType]] | None
    ) = None
    view: bool = True


def _html_score(report: Report, view: View, width: int) -> str:
    from micronet_score.html_report import score_html

    return score_html(report.to_dict(), view.max_score, view.allow_uncounted)


def _html_compare(comparison: Comparison, top: int | None, width: int) -> str:
    from micronet_score.html_report import compare_html

    return compare_html(comparison.to_dict())


FORMATS: dict[str, Renderer] = {
    "table": Renderer("the terminal table", to_text, compare_text, table_parts, compare_parts),
    "json": Renderer("every figure", to_json, compare_json, view=False),
    "csv": Renderer("one row per node", to_csv, view=False),
    "markdown": Renderer("for a pull request", to_markdown, compare_markdown),
    "html": Renderer("a page with a chart", _html_score, _html_compare, view=False),
}


def score_formats() -> list[str]:
    return list(FORMATS)


def compare_formats() -> list[str]:
    return [name for name, renderer in FORMATS.items() if renderer.compare is not None]
