"""Report views without the counting engine: rows summed by module prefix, ordering, comparison,
number formats and the terminal table at 80 columns, all on hand-built reports."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from micronet_score.report import (
    compare_markdown,
    compare_parts,
    render_plain,
    to_markdown,
    to_text,
)
from micronet_score.report.numbers import (
    format_count,
    format_exact,
    format_percent,
    format_score,
    format_score_change,
    share_bar,
)
from micronet_score.report.summary import gate
from micronet_score.report.table import wrap_name
from micronet_score.results import Layer, Report
from micronet_score.rules import Baseline
from micronet_score.views import View, arrange, compare, rows

BASE = Baseline("tiny", "Tiny", "None", params=1000.0, ops=1_000_000.0,
                input_shape=(3, 8, 8), quality="none")


def make_layer(name: str, module: str, op: str, params: int = 0, zeros: int = 0,
               bits: tuple[int | None, int] = (32, 32), storage: float = 0.0, mults: float = 0.0,
               adds: float = 0.0, ops: float = 0.0, fmt: str = "dense",
               shape: tuple[int, ...] = (4, 8, 8)) -> Layer:
    return Layer(
        name=name, node=name.replace(".", "_"), module=module, op=op, target=op,
        output_shape=shape, params=params, weight_bits=bits[0], act_bits=bits[1],
        sparsity=zeros / params if params else 0.0, storage_format=fmt if params else "",
        storage_bits=storage * 32, mults=mults, adds=adds, effective_ops=ops, share=0.0, note="",
    )


def make_report(layers: list[Layer], base: Baseline = BASE) -> Report:
    """Shares and score as the counter derives them: each layer's part of the score."""
    parts = [la.effective_params / base.params + la.effective_ops / base.ops for la in layers]
    score = sum(parts)
    params = sum(la.effective_params for la in layers)
    ops = sum(la.effective_ops for la in layers)
    return Report(
        score=score, params_score=params / base.params, ops_score=ops / base.ops,
        params=params, ops=ops, mults=sum(la.mults for la in layers),
        adds=sum(la.adds for la in layers), freebie=False, freebie_reason="turned off by the user",
        rules="micronet", baseline=base, input_shape=(3, 8, 8), trace_method="symbolic_trace",
        layers=tuple(replace(la, share=p / score) for la, p in zip(layers, parts, strict=True)),
        uncounted=(), warnings=(),
    )


# A DenseNet-like report: conv1, two layers in dense1.0, one in dense1.1, trans1, a top-level
# mean (no module), linear.
LAYERS = [
    make_layer("conv1", "conv1", "conv", 100, 0, (32, 32), 100, 5000, 4900, 9900),
    make_layer("dense1.0.conv", "dense1.0.conv", "conv", 200, 50, (8, 8), 60, 4000, 3000, 5000,
               fmt="sparse"),
    make_layer("dense1.0/relu", "dense1.0", "relu", 0, 0, (None, 8), 0, 100, 0, 25),
    make_layer("dense1.1.conv", "dense1.1.conv", "conv", 300, 0, (16, 16), 150, 6000, 5000, 8000),
    make_layer("trans1.conv", "trans1.conv", "conv", 50, 10, (32, 32), 40, 1000, 900, 1900,
               fmt="kernel_mask"),
    make_layer("mean", "", "mean", 0, 0, (None, 32), 0, 10, 90, 100, shape=(4,)),
    make_layer("linear", "linear", "linear", 20, 0, (32, 32), 20, 200, 190, 390, shape=(10,)),
]
REPORT = make_report(LAYERS)
# Each row's part of the score by hand: storage / 1000 + ops / 1e6.
PART = {"conv1": 0.1099, "dense1": 0.223025, "trans1": 0.0419, "mean": 0.0001, "linear": 0.02039}


def test_depth_one_sums_every_figure() -> None:
    by_name = {row.name: row for row in rows(REPORT, depth=1)}
    assert list(by_name) == ["conv1", "dense1", "trans1", "mean", "linear"]
    dense = by_name["dense1"]
    assert (dense.layers, dense.params, dense.zeros) == (3, 500, 50)
    assert (dense.storage, dense.mults, dense.adds, dense.ops) == (210, 10100, 8000, 13025)
    assert (dense.weight_bits, dense.act_bits) == ((8, 16), (8, 16))
    assert dense.op == "3 nodes"
    assert dense.storage_format == "mixed"  # sparse and dense layers
    assert dense.sparsity == pytest.approx(0.1)
    assert dense.output_shape == (4, 8, 8)  # the group's last layer
    for name, part in PART.items():
        assert by_name[name].score == pytest.approx(part)
        assert by_name[name].share == pytest.approx(part / REPORT.score)
    assert REPORT.score == pytest.approx(sum(PART.values()))
    assert sum(row.share for row in by_name.values()) == pytest.approx(1.0)


def test_depth_two_and_beyond() -> None:
    assert [r.name for r in rows(REPORT, depth=2)] == [
        "conv1", "dense1.0", "dense1.1", "trans1.conv", "mean", "linear"
    ]
    pair = rows(REPORT, depth=2)[1]
    assert (pair.layers, pair.params, pair.mults, pair.op) == (2, 200, 4100, "2 nodes")
    # Deeper than any path: each module keeps its rows' sum, and single layers keep their op.
    deep = rows(REPORT, depth=9)
    assert [r.name for r in deep] == [
        "conv1", "dense1.0.conv", "dense1.0", "dense1.1.conv", "trans1.conv", "mean", "linear"
    ]
    assert deep[0].op == "conv"
    assert rows(REPORT) == rows(REPORT, depth=None)
    assert [r.name for r in rows(REPORT)] == [la.name for la in LAYERS]


def test_same_op_groups_say_how_many() -> None:
    report = make_report([
        make_layer("a.x", "a.x", "conv", 10, 0, (32, 32), 10, 10, 10, 20),
        make_layer("a.y", "a.y", "conv", 10, 0, (32, 32), 10, 10, 10, 20),
    ])
    (row,) = rows(report, depth=1)
    assert row.op == "conv x2"
    assert row.weight_bits == (32,)


def test_sort_and_top() -> None:
    all_rows = rows(REPORT, depth=1)
    shown, hidden = arrange(all_rows, "score")
    assert [r.name for r in shown] == ["dense1", "conv1", "trans1", "linear", "mean"]
    assert hidden == 0
    shown, hidden = arrange(all_rows, "order", top=2)
    assert ([r.name for r in shown], hidden) == (["conv1", "dense1"], 3)
    shown, hidden = arrange(all_rows, "score", top=3)
    assert ([r.name for r in shown], hidden) == (["dense1", "conv1", "trans1"], 2)
    shown, _ = arrange(all_rows, "order", top=100)
    assert len(shown) == 5
    with pytest.raises(ValueError, match="unknown sort"):
        arrange(all_rows, "size")


def test_markdown_rows_hold_exact_sums() -> None:
    text = to_markdown(REPORT, View(depth=1, sort="score", top=2))
    assert text.startswith(f"**MicroNet score: {REPORT.score:.6f}**")
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert table == [
        "| `dense1` | 3 nodes | 4x8x8 | 500 | 10% | 8..16/8..16 | 210 mixed | 10,100 | 8,000 | "
        f"13,025 | {PART['dense1'] / REPORT.score:.1%} |",
        f"| `conv1` | conv | 4x8x8 | 100 | 0% | 32/32 | 100 | 5,000 | 4,900 | 9,900 | "
        f"{PART['conv1'] / REPORT.score:.1%} |",
    ]
    total = next(line for line in text.splitlines() if line.startswith("| **total**"))
    assert "| 670 | 9% | 8..32/8..32 | 370 | 16,310 | 14,080 | 25,315 | 100.0% |" in total
    assert "3 of 5 rows not shown (--top 2); the totals cover all of them" in text


def test_table_columns_and_totals_when_wide() -> None:
    text = to_text(REPORT, View(depth=1), width=160)
    header = text.splitlines()[0].split()
    assert header == ["layer", "op", "output", "params", "sparsity", "bits", "storage",
                      "mults", "adds", "ops", "share"]
    dense = next(line for line in text.splitlines() if line.startswith("dense1 "))
    assert dense.split()[:11] == ["dense1", "3", "nodes", "4x8x8", "500", "10%", "8..16/8..16",
                                  "210", "mixed", "10.1K", "8.00K"]
    total = next(line for line in text.splitlines() if line.startswith("total "))
    assert total.split() == ["total", "670", "9%", "8..32/8..32", "370", "16.3K", "14.1K",
                             "25.3K", "100.0%"]
    assert "not shown at" not in text
    assert "mults and adds are raw counts" in text


def test_share_bars_are_relative_to_the_heaviest_row() -> None:
    text = to_text(REPORT, View(depth=1), width=160)
    bars = {line.split()[0]: line.rstrip() for line in text.splitlines()[2:7]}
    assert bars["dense1"].endswith("█" * 8)
    assert bars["conv1"].endswith(share_bar(PART["conv1"] / PART["dense1"]))
    assert not bars["mean"].endswith(("█", "▏"))  # 0.0% of the heaviest: no bar


LONG = [
    make_layer(f"features.denseblock{b}.denselayer{i}.conv{c}",
               f"features.denseblock{b}.denselayer{i}.conv{c}", "conv", 123_456, 61_728, (8, 8),
               40_000.5, 98_765_432, 98_000_000, 49_382_716, fmt="sparse", shape=(128, 32, 32))
    for b in (1, 2) for i in (1, 12) for c in (1, 2)
]


@pytest.mark.parametrize("width", [80, 100])
def test_table_fits_narrow_terminals_legibly(width: int) -> None:
    report = make_report(LONG)
    text = to_text(report, View(), width=width)
    lines = text.splitlines()
    table = lines[: lines.index("") if "" in lines else len(lines)]
    assert all(len(line) <= width for line in table), "\n".join(table)
    header = table[0].split()
    for column in ("layer", "params", "sparsity", "bits", "storage", "ops", "share"):
        assert column in header
    # Numbers are whole: no ellipsis anywhere, every row's figures intact.
    assert "…" not in text
    numbers = re.findall(r"\b123K\b +50% +8/8 +40.0K sparse +49.4M +12.5%", text)
    assert len(numbers) == len(LONG)
    # Long names wrap after a dot, and every part of every name is there.
    joined = re.sub(r"\s+", " ", text)
    for layer in LONG:
        for part in layer.name.split("."):
            assert part in joined
    assert "not shown at" in text and "mults, adds" in text


def test_an_all_dense_sparsity_column_goes_first() -> None:
    dense = make_report([replace(la, sparsity=0.0, storage_format="dense") for la in LONG])
    text = to_text(dense, View(), width=80)
    header = text.splitlines()[0].split()
    assert "sparsity" not in header and "op" in header
    assert "not shown at 80 columns: sparsity, mults, adds" in text
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert total.split()[:3] == ["total", "988K", "8/8"]


def test_every_column_at_width_wide_enough() -> None:
    text = to_text(make_report(LONG), View(), width=200)
    assert "not shown at" not in text
    assert "features.denseblock1.denselayer1.conv1" in text
    assert max(len(line) for line in text.splitlines()[:12]) <= 200


def test_wrap_name_breaks_after_dots() -> None:
    assert wrap_name("features.denseblock1.conv", 30) == "features.denseblock1.conv"
    assert wrap_name("features.denseblock1.conv", 12) == "features.\ndenseblock1.\nconv"
    assert wrap_name("a/verylongnodename", 6) == "a/\nverylo\nngnode\nname"


def test_summary_lines_and_gate() -> None:
    text = to_text(REPORT, View(max_score=0.5), width=100)
    assert f"score:       {REPORT.score:.6f}" in text
    assert "params part: 370 / 1,000 = 0.370000" in text
    assert "ops part:    25,315 / 1,000,000 = 0.025315" in text
    assert "baseline:    tiny, Tiny on None: 1,000 params, 1,000,000 ops" in text
    assert "rule set:    micronet" in text
    assert "16-bit freebie: not applied (turned off by the user)" in text
    assert "gate:        PASS, the score is at or under --max-score 0.5" in text
    assert gate(replace(REPORT, score=0.3), 0.3) == (
        True, "PASS: score 0.300000 is at or under --max-score 0.3")
    passed, line = gate(replace(REPORT, score=0.020000001), 0.02)
    assert not passed
    assert line == "FAIL: score 0.020000001 is above --max-score 0.02"  # digits enough to differ


def test_warnings_show_in_the_summary() -> None:
    report = replace(REPORT, warnings=("--bits pattern 'dense9' matches no module",))
    assert "warning: --bits pattern 'dense9' matches no module" in to_text(report)
    assert "- warning: --bits pattern 'dense9'" in to_markdown(report)


def test_number_formats() -> None:
    assert [format_count(v) for v in (0, 12, 12.5, 999, 999.96, 1234, 12_345, 123_456,
                                      999_999, 1.5e9, 2.5e12)] == [
        "0", "12", "12.5", "999", "1.00K", "1.23K", "12.3K", "123K", "1.00M", "1.50G", "2.50T"
    ]
    assert [format_exact(v) for v in (0, 1234567, 1234.25, 0.5)] == [
        "0", "1,234,567", "1,234.25", "0.5"
    ]
    assert [format_percent(v) for v in (0, 0.004, 0.5, 0.996, 1)] == [
        "0%", "<1%", "50%", ">99%", "100%"
    ]
    assert [format_score(v) for v in (0, 0.0123456, 0.00059161, 5.2e-7)] == [
        "0.000000", "0.012346", "0.0005916", "5.2e-07"
    ]
    assert [format_score_change(v) for v in (0, 1e-8, -0.0012345)] == ["0", "+1.0e-08",
                                                                       "-0.001234"]
    assert share_bar(1.0) == "█" * 8
    assert share_bar(0.5) == "████"
    assert share_bar(1 / 64) == "▏"
    assert share_bar(0.5, unicode=False) == "####"
    assert share_bar(2.0, width=4) == "████"


# --- compare ------------------------------------------------------------------------------

AFTER = make_report([
    LAYERS[0],
    replace(LAYERS[1], sparsity=0.75, storage_bits=30 * 32, effective_ops=2500),  # pruned more
    LAYERS[2],
    replace(LAYERS[3], weight_bits=4, storage_bits=40 * 32),  # quantized
    # trans1.conv removed
    LAYERS[5],
    LAYERS[6],
    make_layer("extra", "extra", "conv", 10, 0, (32, 32), 10, 100, 90, 190),  # added
])


def test_compare_matches_by_name_and_sorts_by_change() -> None:
    comparison = compare(REPORT, AFTER, ("a.pt2", "b.pt2"))
    changes = {c.name: c for c in comparison.changes}
    assert changes["dense1.1.conv"].status == "changed"
    assert changes["dense1.1.conv"].score_change == pytest.approx(-0.110)
    assert changes["trans1.conv"].status == "removed"
    assert changes["trans1.conv"].after is None
    assert changes["trans1.conv"].score_change == pytest.approx(-0.0419)
    assert changes["extra"].status == "added"
    assert changes["extra"].score_change == pytest.approx(0.01019)
    assert changes["dense1.0.conv"].score_change == pytest.approx(-0.0325)
    assert changes["conv1"].status == "same"
    sizes = [abs(c.score_change) for c in comparison.changes]
    assert sizes == sorted(sizes, reverse=True)
    assert [c.name for c in comparison.changes[:4]] == [
        "dense1.1.conv", "trans1.conv", "dense1.0.conv", "extra"
    ]
    total = sum(c.score_change for c in comparison.changes)
    assert total == pytest.approx(AFTER.score - REPORT.score)


def test_compare_by_prefix_and_its_formats() -> None:
    comparison = compare(REPORT, AFTER, ("a.pt2", "b.pt2"), depth=1)
    assert [c.name for c in comparison.changes if c.status != "same"] == [
        "dense1", "trans1", "extra"
    ]
    data = comparison.to_dict()
    assert data["a"]["model"] == "a.pt2" and data["b"]["model"] == "b.pt2"
    assert data["change"]["score"] == pytest.approx(AFTER.score - REPORT.score)
    assert data["layers"][0]["name"] == "dense1"
    assert data["layers"][0]["a"]["params"] == 500
    assert data["layers"][1]["b"] is None
    markdown = compare_markdown(comparison, top=2)
    assert markdown.startswith(f"**MicroNet score: {REPORT.score:.6f} → {AFTER.score:.6f}")
    lines = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert lines[0] == "| `dense1` | changed | 500 | 210 → 70 | 13.0K → 10.5K | " \
                       "8..16/8..16 → 4..8/8..16 | 10% → 30% | -0.142500 |"
    assert lines[1].startswith("| `trans1` | removed | 50 | 40 | 1.90K | 32/32 | 20% | "
                               "-0.041900 |")
    assert len(lines) == 2
    assert "1 more changed rows not shown (--top 2)" in markdown
    assert "3 unchanged rows not shown" in markdown


def test_compare_table_at_80_columns() -> None:
    comparison = compare(REPORT, AFTER, ("a.pt2", "b.pt2"))
    text = render_plain(compare_parts(comparison, width=80), 80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "A: a.pt2" in text and "B: b.pt2" in text
    score_line = next(line for line in text.splitlines() if line.startswith("score"))
    assert score_line.split()[1:3] == [f"{REPORT.score:.6f}", f"{AFTER.score:.6f}"]
    rows_text = text[text.index("score change"):]
    order = [name for name in ("dense1.1.conv", "trans1.conv", "dense1.0.conv", "extra")]
    positions = [rows_text.index(name) for name in order]
    assert positions == sorted(positions)
    assert "300  " in rows_text and "16/16→4/16" in rows_text
    assert "removed" in rows_text and "added" in rows_text
    assert "conv1 " not in rows_text  # unchanged rows are counted, not listed


def test_compare_plain_text_has_no_unicode_when_asked() -> None:
    comparison = compare(REPORT, AFTER)
    text = render_plain(compare_parts(comparison, width=120, unicode=False), 120)
    assert "->" in text and "→" not in text
