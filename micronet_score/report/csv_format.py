"""CSV: one row per counted node whatever the view, every figure, for spreadsheets and scripts.

The columns are the JSON keys of a layer (`results.Layer`) less the fx node name and the raw
storage bits; `output_shape` is per example, without the batch (3x32x32), as in the table.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from micronet_score.report.numbers import format_shape
from micronet_score.results import Layer, Report, csv_columns
from micronet_score.views import WHOLE, View

COLUMNS = csv_columns(Layer)


def _cell(key: str, value: Any) -> Any:
    return format_shape(value) if key == "output_shape" else value


def to_csv(report: Report, view: View = WHOLE, width: int = 0) -> str:
    """One row per layer; the view and the width do not apply."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for layer in report.layers:
        data = layer.to_dict()
        writer.writerow(_cell(key, data[key]) for key in COLUMNS)
    return buffer.getvalue()

