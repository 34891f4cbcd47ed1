"""Shared test helpers: look up layers in a report by name or op."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from micronet_score.report import Layer, Report


def layer(report: Report, name: str) -> Layer:
    for candidate in report.layers:
        if candidate.name == name:
            return candidate
    raise AssertionError(f"no layer {name!r}; have {[c.name for c in report.layers]}")


def layers_of(report: Report, op: str) -> list[Layer]:
    return [candidate for candidate in report.layers if candidate.op == op]


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    """Counts never depend on threads; one thread keeps the suite's timing stable on 2 cores."""
    import torch

    torch.set_num_threads(1)
