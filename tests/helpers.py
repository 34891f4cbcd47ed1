"""Shared test helpers: look up layers in a report by name or op."""

from __future__ import annotations

from micronet_score.report import Layer, Report


def layer(report: Report, name: str) -> Layer:
    for candidate in report.layers:
        if candidate.name == name:
            return candidate
    raise AssertionError(f"no layer {name!r}; have {[c.name for c in report.layers]}")


def layers_of(report: Report, op: str) -> list[Layer]:
    return [candidate for candidate in report.layers if candidate.op == op]
