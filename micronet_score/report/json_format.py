"""JSON: the whole report (`Report.to_dict`) or comparison (`Comparison.to_dict`), every figure."""

from __future__ import annotations

import json

from micronet_score.results import Report
from micronet_score.views import WHOLE, Comparison, View


def to_json(report: Report, view: View = WHOLE, width: int = 0) -> str:
    """The report as JSON; the view and the width do not apply."""
    return json.dumps(report.to_dict(), indent=2)


def compare_json(comparison: Comparison, top: int | None = None, width: int = 0) -> str:
    """The comparison as JSON: every row, whatever `top`."""
    return json.dumps(comparison.to_dict(), indent=2)
