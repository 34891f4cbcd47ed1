"""The words around the tables: the summary under a report, warnings, the gate's verdict, the
--strict failure and the `rules` listing. Every renderer takes its summary from here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from micronet_score.report.numbers import (
    format_bar,
    format_exact,
    format_score,
    format_score_against,
    format_shape,
)
from micronet_score.views import UncountedGroup, blocking_uncounted, uncounted_groups

if TYPE_CHECKING:
    from micronet_score.results import Report, Uncounted
    from micronet_score.rules import Baseline

INDENT = 13  # where the values of the summary start, and where a reflowed line continues
SHOWN_GROUPS = 10  # uncounted groups listed under a table; the JSON report has every node
NAMED_GROUPS = 3  # uncounted groups named in a one-line warning or error


@dataclass(frozen=True)
class Line:
    """A summary line: a label ("score:") and the fields after it. A field is never broken when
    the line is reflowed to a width (numbers and their units are one field, prose one field per
    word); `style` is how a terminal shows the line (a rich style, "" for none)."""

    label: str
    fields: tuple[str, ...]
    style: str = ""

    @property
    def text(self) -> str:
        """The line in one piece, without the label's padding (for Markdown)."""
        return " ".join(part for part in (self.label.strip(), *self.fields) if part)

    def reflow(self, width: int, indent: int = INDENT) -> str:
        """The line broken between fields so that none is wider than `width` (a single field
        wider than that stays whole), continued under the first field (at most `indent`)."""
        indent = min(indent, len(self.label) + 1) if self.label else indent
        lines, current, placed = [], self.label, False
        for part in self.fields:
            if placed and len(current) + 1 + len(part) > width:
                lines.append(current)
                current = " " * indent + part
            else:
                current = f"{current} {part}" if current else part
            placed = True
        lines.append(current)
        return "\n".join(lines)


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


TIMES = "\u00d7"  # the multiplication sign


def uncounted_text(group: UncountedGroup, unicode: bool = True) -> str:
    """How many nodes of one target one module leaves uncounted: `3 TIMES cumsum in
    blocks.0.mlp`, with the multiplication sign (an x without `unicode`)."""
    where = f"in {group.module}" if group.module else "in the top-level forward"
    return f"{len(group.nodes)} {TIMES if unicode else 'x'} {group.target} {where}"


def _nodes(count: int) -> str:
    return f"{count} node{'' if count == 1 else 's'}"


def _named_groups(report: Report, nodes: Sequence[Uncounted] | None = None) -> str:
    groups = uncounted_groups(report, nodes)
    named = ", ".join(uncounted_text(g) for g in groups[:NAMED_GROUPS])
    more = len(groups) - NAMED_GROUPS
    return named + (f" and {more} more group{'' if more == 1 else 's'}" if more > 0 else "")


def warning_lines(report: Report) -> list[str]:
    """The report's warnings, one line each, for stderr."""
    lines = []
    if report.uncounted:
        lines.append(f"warning: {_nodes(len(report.uncounted))} not counted: "
                     f"{_named_groups(report)}")
    lines.extend(f"warning: {w}" for w in report.warnings)
    return lines


def strict_failure(report: Report) -> str:
    """The --strict error: how many nodes are uncounted, and which (the first few groups)."""
    return f"{_nodes(len(report.uncounted))} not counted (--strict): {_named_groups(report)}"


def gate(report: Report, max_score: float, allowed: Sequence[str] = ()) -> tuple[bool, str]:
    """The --max-score verdict and its one line: PASS at or under the bar, FAIL above it, and
    FAIL whatever the score while nodes are uncounted that `allowed` does not accept (a score that
    leaves out work is no verdict). The score shows as many digits as it takes to differ from
    the bar."""
    blocking = blocking_uncounted(report, allowed)
    if blocking:
        return False, (f"FAIL: the count is incomplete ({_nodes(len(blocking))} not counted: "
                       f"{_named_groups(report, blocking)}), so the score is no verdict; "
                       "accept them with --allow-uncounted OP if they cost nothing")
    score = report.score
    passed = score <= max_score
    shown, bar = format_score_against(score, max_score), format_bar(max_score)
    if passed:
        return True, f"PASS: score {shown} is at or under --max-score {bar}"
    return False, f"FAIL: score {shown} is above --max-score {bar}"


def _uncounted_lines(report: Report, unicode: bool) -> list[Line]:
    if not report.uncounted:
        return []
    groups = uncounted_groups(report)
    lines = [Line("warning:", words(f"{_nodes(len(report.uncounted))} not counted; their "
                                     "operations are not in the score:"), "yellow")]
    lines += [Line("uncounted:  ", words(uncounted_text(group, unicode)), "yellow")
              for group in groups[:SHOWN_GROUPS]]
    if len(groups) > SHOWN_GROUPS:
        lines.append(Line("uncounted:  ", words(f"and {len(groups) - SHOWN_GROUPS} more groups "
                                                 "(see --format json)"), "yellow"))
    return lines


def summary_lines(report: Report, max_score: float | None = None, unicode: bool = True,
                  allowed: Sequence[str] = ()) -> list[Line]:
    """The few lines that answer "what does it cost and how does it compare"."""
    base = report.baseline
    freebie = "applied" if report.freebie else "not applied"
    lines = [
        Line("params part:", (f"{format_exact(report.params)} / {format_exact(base.params)} = "
                              f"{format_score(report.params_score)}",
                              "(storage, 32-bit equivalents)")),
        Line("ops part:   ", (f"{format_exact(report.ops)} / {format_exact(base.ops)} = "
                              f"{format_score(report.ops_score)}", "(32-bit equivalents)")),
        Line("score:      ", (format_score(report.score), "(lower is better)"), "bold"),
        Line("baseline:   ", (f"{base.name},", *words(f"{base.model} on {base.dataset}:"),
                              f"{format_exact(base.params)} params,",
                              f"{format_exact(base.ops)} ops", f"({base.quality})")),
        Line("rule set:   ", (f"{report.rules};", "input", f"1x{format_shape(report.input_shape)},",
                              *words(f"traced with {report.trace_method}"))),
        Line("16-bit freebie:", words(f"{freebie} ({report.freebie_reason})")),
        *_uncounted_lines(report, unicode),
        *(Line("warning:", words(warning), "yellow") for warning in report.warnings),
    ]
    if max_score is not None:
        passed = gate(report, max_score, allowed)[0]
        verdict = "at or under" if passed else "above"
        reason = ((*words(f"the score is {verdict} --max-score"), format_bar(max_score))
                  if not blocking_uncounted(report, allowed)
                  else words("the count is incomplete (nodes not counted)"))
        lines.append(Line("gate:       ", (f"{'PASS' if passed else 'FAIL'},", *reason),
                          "bold green" if passed else "bold red"))
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
            f"  {base.name:<18} {base.model} on {base.dataset}: params {format_exact(base.params)}"
            f", ops {format_exact(base.ops)}, input {shape}, bar {base.quality}"
        )
    return lines
