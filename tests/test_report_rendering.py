"""What the reports show, on hand-built reports: the field list written once, per-example shapes,
uncounted nodes grouped in every text report and in the --strict line, one row per node,
summary lines that break between fields, storage in compare, and changed rows that show what
changed."""
# ruff: noqa: RUF001  (the reports write the multiplication sign on purpose)

from __future__ import annotations

from dataclasses import fields, replace

import pytest
from test_report import AFTER, LAYERS, REPORT, make_layer, make_report

from micronet_score.report import (
    FORMATS,
    compare_formats,
    compare_markdown,
    compare_text,
    score_formats,
    strict_failure,
    to_csv,
    to_markdown,
    to_text,
    warning_lines,
)
from micronet_score.report.summary import Line
from micronet_score.results import Layer, Report, Uncounted, csv_columns, per_example
from micronet_score.rules import Baseline
from micronet_score.views import Row, View, compare, rows

# --- the result types ------------------------------------------------------------------------


def test_json_keys_and_csv_columns_come_from_the_fields() -> None:
    layer = REPORT.layers[1]
    names = [f.name for f in fields(Layer)]
    keys = list(layer.to_dict())
    # Every field, in order, with the derived 32-bit equivalent right after the bits it comes from.
    assert keys == [*names[:12], "effective_params", *names[12:]]
    assert layer.to_dict()["effective_params"] == 60 and layer.to_dict()["mults"] == 4000
    assert isinstance(layer.to_dict()["mults"], int)  # whole counts as integers
    assert csv_columns(Layer) == (
        "name", "module", "op", "target", "output_shape", "params", "weight_bits", "act_bits",
        "sparsity", "storage_format", "effective_params", "mults", "adds", "effective_ops",
        "share", "note",
    )
    assert to_csv(REPORT).splitlines()[0] == ",".join(csv_columns(Layer))
    names = [f.name for f in fields(Report)]  # `complete` follows the uncounted nodes
    assert list(REPORT.to_dict()) == [*names[:-1], "complete", names[-1]]
    assert list(Uncounted("n", "t", "m").to_dict()) == ["node", "target", "module"]
    row = rows(REPORT, depth=1)[1]
    assert list(row.to_dict()) == [
        "name", "op", "output_shape", "layers", "params", "zeros", "sparsity", "weight_bits",
        "act_bits", "storage_format", "effective_params", "mults", "adds", "effective_ops",
        "share", "score",
    ]
    assert row.to_dict()["effective_params"] == row.storage == 210
    assert len(fields(Row)) == len(row.to_dict()) - 1  # sparsity is derived


def test_shapes_are_per_example_everywhere() -> None:
    assert [per_example(s) for s in [(1, 3, 32, 32), (1, 10), (10,), (), (5, 1, 8), (1,)]] == [
        (3, 32, 32), (10,), (10,), (), (5, 1, 8), (1,)
    ]
    csv_rows = to_csv(REPORT).splitlines()
    assert csv_rows[1].split(",")[4] == "4x8x8"  # as the table's output column
    assert REPORT.to_dict()["layers"][0]["output_shape"] == [4, 8, 8]
    assert "| `mean` | mean | 4 |" in to_markdown(REPORT)


def test_the_format_table_builds_the_choices() -> None:
    assert score_formats() == ["table", "json", "csv", "markdown", "html"]
    assert compare_formats() == ["table", "json", "markdown", "html"]
    assert [name for name, r in FORMATS.items() if not r.view] == ["json", "csv", "html"]
    view = View(depth=1)
    assert FORMATS["table"].score(REPORT, view, 80) == to_text(REPORT, view, 80)


# --- uncounted nodes ---------------------------------------------------------------------------

UNCOUNTED = replace(REPORT, uncounted=(
    *(Uncounted(f"cumsum_{i}", "cumsum", f"blocks.{i % 2}.mlp") for i in range(6)),
    Uncounted("cummax", "cummax", ""),
))


def test_uncounted_nodes_are_listed_by_op_and_module() -> None:
    text = to_text(UNCOUNTED, width=80)
    listed = [line for line in text.splitlines() if line.startswith(("warning", "uncounted"))]
    assert listed == [
        "warning: 7 nodes not counted; their operations are not in the score:",
        "uncounted:   3 × cumsum in blocks.0.mlp",
        "uncounted:   3 × cumsum in blocks.1.mlp",
        "uncounted:   1 × cummax in the top-level forward",
    ]
    markdown = to_markdown(UNCOUNTED)
    assert "- uncounted: 3 × cumsum in blocks.1.mlp\n" in markdown
    assert strict_failure(UNCOUNTED) == (
        "7 nodes not counted (--strict): 3 × cumsum in blocks.0.mlp, 3 × cumsum in "
        "blocks.1.mlp, 1 × cummax in the top-level forward"
    )
    assert warning_lines(UNCOUNTED) == [
        "warning: 7 nodes not counted: 3 × cumsum in blocks.0.mlp, 3 × cumsum in "
        "blocks.1.mlp, 1 × cummax in the top-level forward"
    ]


def test_many_uncounted_groups_name_the_first_few() -> None:
    many = replace(REPORT, uncounted=tuple(Uncounted(f"op{i}", f"op{i}", "m") for i in range(14)))
    assert strict_failure(many) == ("14 nodes not counted (--strict): 1 × op0 in m, "
                                    "1 × op1 in m, 1 × op2 in m and 11 more groups")
    listed = [line for line in to_text(many, width=100).splitlines()
              if line.startswith("uncounted")]
    assert len(listed) == 11
    assert listed[-1] == "uncounted:   and 4 more groups (see --format json)"
    one = replace(REPORT, uncounted=(Uncounted("c", "cumsum", "a"),))
    assert strict_failure(one) == "1 node not counted (--strict): 1 × cumsum in a"


def test_an_uncounted_modules_parameters_make_one_row() -> None:
    # An uncounted module's weight and bias are charged one tensor at a time under one name.
    charged = [replace(make_layer("bil/bil", "bil", "parameter", 48, 0, (32, 32), 48), note="x"),
               replace(make_layer("bil/bil", "bil", "parameter", 3, 0, (32, 32), 3), note="x")]
    report = make_report([*charged, LAYERS[0]])
    assert [(r.name, r.op, r.params, r.storage) for r in rows(report)] == [
        ("bil/bil", "parameter x2", 51, 51), ("conv1", "conv", 100, 100)
    ]
    assert len([line for line in to_text(report).splitlines() if line.startswith("bil/")]) == 1


# --- summary lines at a width ------------------------------------------------------------------

def test_summary_lines_break_between_fields() -> None:
    line = Line("baseline:   ", ("wrn,", "WideResNet-28-10", "on", "CIFAR-100:",
                                "36,500,000 params,", "10,490,000,000 ops", "(80% top-1)"))
    assert line.reflow(80) == ("baseline:    wrn, WideResNet-28-10 on CIFAR-100: 36,500,000 "
                               "params,\n             10,490,000,000 ops (80% top-1)")
    assert line.reflow(200) == line.reflow(200).replace("\n", "") and "\n" not in line.reflow(200)
    assert Line("warning:", ("a", "bb", "cc")).reflow(13) == "warning: a bb\n         cc"
    assert Line("x:", ("far-too-long-to-fit",)).reflow(5) == "x: far-too-long-to-fit"
    big = Baseline("big", "BigNet-50 (a long model name)", "ImageNet-21K", 1.234567e9,
                   9.87654321e11, (3, 224, 224), "90% top-1, 99% top-5")
    report = make_report(LAYERS, big)
    for width in (60, 80):
        text = to_text(report, width=width)
        summary = text[text.index("params part:"):].splitlines()
        assert all(len(line) <= width and line == line.rstrip() for line in summary), summary
        # Every figure of the one-line form is whole in the reflowed one.
        whole = to_text(report, width=400)
        figures = {f for f in whole[whole.index("params part:"):].split() if f[0].isdigit()}
        assert figures <= set(" ".join(summary).split()), figures - set(" ".join(summary).split())


# --- compare -----------------------------------------------------------------------------------

def test_compare_shows_storage_in_rows_and_totals() -> None:
    comparison = compare(REPORT, AFTER, ("a.pt2", "b.pt2"))
    text = compare_text(comparison, width=120)
    totals = {line[:20].strip(): line[20:].split() for line in text.splitlines()[2:8]}
    assert totals["params"] == ["670", "630", "-40", "(-6.0%)"]
    assert totals["storage (32-bit eq.)"] == ["370", "200", "-170", "(-45.9%)"]
    header = next(line for line in text.splitlines() if line.startswith("layer"))
    assert header.split()[:5] == ["layer", "change", "params", "storage", "ops"]
    pruned = next(line for line in text.splitlines() if line.startswith("dense1.0.conv"))
    assert pruned.split()[:5] == ["dense1.0.conv", "changed", "200", "60→30", "5.00K→2.50K"]
    markdown = compare_markdown(comparison)
    assert "| storage (32-bit eq.) | 370 | 200 | -170 (-45.9%) |" in markdown
    assert "| `dense1.0.conv` | changed | 200 | 60 → 30 | 5.00K → 2.50K |" in markdown


def _pair(after: Layer) -> tuple[Report, Report]:
    before = make_layer("block", "block", "conv", 100, 0, (32, 32), 100, 6000, 7025, 13_025)
    return make_report([before, LAYERS[0]]), make_report([after, LAYERS[0]])


def test_a_change_too_small_for_the_short_form_shows_every_digit() -> None:
    # 13,025 and 13,030 ops both read 13.0K.
    before, after = _pair(make_layer("block", "block", "conv", 100, 0, (32, 32), 100, 6000, 7030,
                                     13_030))
    comparison = compare(before, after)
    row = next(line for line in compare_text(comparison, width=120).splitlines()
               if line.startswith("block"))
    assert row.split()[:5] == ["block", "changed", "100", "100", "13,025→13,030"]
    assert "| `block` | changed | 100 | 100 | 13,025 → 13,030 |" in compare_markdown(comparison)


def test_a_change_no_shown_figure_can_tell_is_marked() -> None:
    # One multiplication more and one addition fewer at the same width: the same ops, storage,
    # bits and sparsity. The row did change (JSON has it), yet no cell can show it.
    before, after = _pair(make_layer("block", "block", "conv", 100, 0, (32, 32), 100, 6001, 7024,
                                     13_025))
    comparison = compare(before, after)
    (change,) = [c for c in comparison.changes if c.status != "same"]
    assert change.status == "changed"
    row = next(line for line in compare_text(comparison, width=120).splitlines()
               if line.startswith("block"))
    assert "changed (below display precision)" in row
    assert "| `block` | changed (below display precision) | 100 | 100 | 13.0K |" in (
        compare_markdown(comparison))
    assert comparison.to_dict()["layers"][0]["status"] == "changed"


@pytest.mark.parametrize("width", [80, 100])
def test_compare_fits_the_width(width: int) -> None:
    text = compare_text(compare(REPORT, AFTER, ("a.pt2", "b.pt2")), width=width)
    assert all(len(line) <= width and line == line.rstrip() for line in text.splitlines())
