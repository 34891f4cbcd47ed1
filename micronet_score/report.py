"""The result of an analysis, and the only module that turns numbers into text.

Kept free of torch so that reports can be loaded, compared and formatted cheaply.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from micronet_score.rules import Baseline


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


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


CSV_COLUMNS = (
    "name", "module", "op", "target", "output_shape", "params", "weight_bits", "act_bits",
    "sparsity", "storage_format", "effective_params", "mults", "adds", "effective_ops", "share",
    "note",
)


def to_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for layer in report.layers:
        row = layer.to_dict()
        row["output_shape"] = "x".join(str(d) for d in layer.output_shape)
        writer.writerow(row[column] for column in CSV_COLUMNS)
    return buffer.getvalue()


def summary_lines(report: Report) -> list[str]:
    """The few lines that answer "what does it cost and how does it compare"."""
    base = report.baseline
    freebie = "applied" if report.freebie else "not applied"
    lines = [
        f"params: {report.params:,.0f} (32-bit equivalents) / {base.params:,.0f} = "
        f"{report.params_score:.6f}",
        f"ops:    {report.ops:,.0f} (32-bit equivalents) / {base.ops:,.0f} = "
        f"{report.ops_score:.6f}",
        f"score:  {report.score:.6f}  (rules {report.rules}, baseline {base.name}: {base.model}, "
        f"{base.dataset})",
        f"16-bit freebie: {freebie} ({report.freebie_reason})",
    ]
    if report.uncounted:
        names = ", ".join(f"{u.node} ({u.target})" for u in report.uncounted[:5])
        more = f" and {len(report.uncounted) - 5} more" if len(report.uncounted) > 5 else ""
        lines.append(f"warning: {len(report.uncounted)} node(s) not counted: {names}{more}")
    lines.extend(f"warning: {w}" for w in report.warnings)
    return lines


def format_count(value: float) -> str:
    """Short human form: 1.23M, 45.6K, 789."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def bits_label(layer: Layer) -> str:
    return f"{layer.weight_bits if layer.weight_bits is not None else '-'}/{layer.act_bits}"


def to_text(report: Report) -> str:
    """A plain table (no colour, fixed columns) followed by the summary."""
    header = ("layer", "op", "output", "params", "sparsity", "bits w/a", "storage", "ops", "share")
    rows = [
        (
            layer.name,
            layer.op,
            "x".join(str(d) for d in layer.output_shape),
            format_count(layer.params),
            f"{layer.sparsity:.0%}" if layer.params else "",
            bits_label(layer),
            format_count(layer.effective_params),
            format_count(layer.effective_ops),
            f"{layer.share:.1%}",
        )
        for layer in report.layers
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in (header, *rows)]
    return "\n".join([*lines, "", *summary_lines(report)]) + "\n"


def to_markdown(report: Report) -> str:
    header = (
        "| layer | op | params | bits w/a | storage | ops | share |\n"
        "|---|---|---:|---|---:|---:|---:|"
    )
    rows = [
        f"| `{layer.name}` | {layer.op} | {layer.params:,} | {bits_label(layer)} | "
        f"{layer.effective_params:,.1f} | {layer.effective_ops:,.0f} | {layer.share:.1%} |"
        for layer in report.layers
    ]
    summary = "\n".join(f"- {line}" for line in summary_lines(report))
    table = "\n".join([header, *rows])
    return f"**MicroNet score: {report.score:.6f}**\n\n{summary}\n\n{table}\n"
