"""The HTML report: one self-contained page (plotly.js inline, no network needed) built from the
JSON report (`micronet-score MODEL --format json`) or comparison (`compare A B --format json`).

A report's page holds the summary, a treemap of the score by module path (tile area = share of the
score, colour = bits or sparsity, hover = the figures) and the per-layer table, sortable by plain
JS in the page; a comparison's holds both totals, the score change by block and the changed rows.
Every string from the report is HTML-escaped here, since module, op and file names come from user
files. Numbers are written by `report.numbers`, as in the other formats. plotly is imported only
when a page is rendered, so the CLI does not start slower.
"""

from __future__ import annotations

import fnmatch
import html
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Any

from micronet_score.report.numbers import format_count as _count
from micronet_score.report.numbers import format_exact as _exact
from micronet_score.report.numbers import format_relative as _relative
from micronet_score.report.numbers import format_score as _score
from micronet_score.report.numbers import format_score_change as _change
from micronet_score.report.numbers import format_shape, format_signed
from micronet_score.report.numbers import format_share as _percent

ROOT = "root"
_BIT_TICKS = (1, 2, 4, 8, 16, 32)
_FORMATS = {"dense": "", "sparse": "sparse", "kernel_mask": "kernel", "filter_mask": "filter"}
# Summed over the layers under a tile, from the JSON layer's keys.
_SUMS = ("params", "effective_params", "effective_ops", "mults", "adds", "share")


def _bits_range(values: Iterable[int]) -> str:
    found = sorted(set(values))
    if not found:
        return "-"
    return str(found[0]) if len(found) == 1 else f"{found[0]}..{found[-1]}"


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _plot_text(value: object) -> str:
    """Text for plotly, which reads labels and hover text as HTML but decodes no &quot;."""
    return html.escape(str(value), quote=False)


# --- The module-path tree -----------------------------------------------------------------

@dataclass
class _Node:
    """A treemap tile: one layer (leaf) or a module-path prefix (the sum of the layers under it)."""

    id: str
    parent: str
    label: str
    path: str
    leaf: dict[str, Any] | None = None
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_SUMS, 0.0))
    zeros: float = 0.0
    bit_params: float = 0.0  # params x weight bits, and the params that have a width
    width_params: float = 0.0
    weight_bits: set[int] = field(default_factory=set)
    act_bits: set[int] = field(default_factory=set)

    def add(self, layer: dict[str, Any]) -> None:
        for key in _SUMS:
            self.sums[key] += layer[key]
        params, bits = layer["params"], layer["weight_bits"]
        self.zeros += round(layer["sparsity"] * params)
        self.act_bits.add(layer["act_bits"])
        if bits is not None:
            self.weight_bits.add(bits)
            self.bit_params += params * bits
            self.width_params += params

    @property
    def bits(self) -> float:
        """Mean weight width over the weights; the activation width where there are none."""
        if self.width_params:
            return self.bit_params / self.width_params
        return min(self.act_bits, default=32)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.sums["params"] if self.sums["params"] else 0.0


def module_tree(layers: Sequence[dict[str, Any]]) -> list[_Node]:
    """Tiles for the JSON layers: a root, one tile per module-path prefix (`dense1`, `dense1.0`)
    and one leaf per layer under its module. A layer named by its module (the module's only node)
    is that module's tile unless deeper modules sit under it."""
    containers: dict[str, _Node] = {"": _Node(ROOT, "", "model", "model")}

    def container(path: str) -> str:
        if path not in containers:
            parent = container(path.rpartition(".")[0])
            # Ids are counters, not paths: no name from the user's file reaches the page unescaped.
            containers[path] = _Node(f"m{len(containers)}", parent, path.rpartition(".")[2], path)
        return containers[path].id

    parts = [layer["module"].split(".") for layer in layers]
    deeper = {".".join(path[:n]) for path in parts for n in range(1, len(path))}
    leaves = []
    for index, layer in enumerate(layers):
        module, name = layer["module"], layer["name"]
        if module and name == module and module not in deeper:
            parent, label = container(module.rpartition(".")[0]), module.rpartition(".")[2]
        else:
            parent, label = container(module), name.rpartition("/")[2]
        leaves.append(_Node(f"l{index}", parent, label, name, leaf=layer))
    by_id = {node.id: node for node in containers.values()}
    for leaf, layer in zip(leaves, layers, strict=True):
        node: _Node | None = leaf
        while node is not None:
            node.add(layer)
            node = by_id.get(node.parent)
    return [*containers.values(), *leaves]


def _hover(node: _Node) -> str:
    """The tile's figures; plotly reads hover text as HTML, so every user string is escaped."""
    layer, sums, lines = node.leaf, node.sums, [f"<b>{_plot_text(node.path)}</b>"]
    if layer is not None:
        lines.append(f"{_plot_text(layer['op'])} ({_plot_text(layer['target'])}), output "
                     f"{format_shape(layer['output_shape'])}")
    fmt = _FORMATS.get(layer["storage_format"], layer["storage_format"]) if layer else ""
    return "<br>".join([
        *lines,
        f"params: {_exact(sums['params'])}; storage: {_count(sums['effective_params'])} "
        f"32-bit eq. {_plot_text(fmt)}",
        f"ops: {_count(sums['effective_ops'])} 32-bit eq.; mults {_count(sums['mults'])}, "
        f"adds {_count(sums['adds'])}",
        f"bits w/a: {_bits_range(node.weight_bits)}/{_bits_range(node.act_bits)}; "
        f"sparsity: {_percent(node.sparsity) if sums['params'] else '-'}",
        f"share of the score: {_percent(sums['share'])}",
    ])


def _colours(values: list[float], title: str, cmax: float, scale: str,
             ticks: tuple[Sequence[float], Sequence[str]]) -> dict[str, Any]:
    """A colour axis as plotly's restyle arguments: dotted keys, arrays wrapped (one per trace)."""
    return {"marker.colors": [values], "marker.cmin": 0, "marker.cmax": cmax,
            "marker.colorscale": scale, "marker.colorbar.title.text": title,
            "marker.colorbar.tickvals": [ticks[0]], "marker.colorbar.ticktext": [ticks[1]]}


def treemap_figure(layers: Sequence[dict[str, Any]]) -> Any:
    """The score by module path as a plotly treemap, colour switchable between bits and sparsity."""
    import plotly.graph_objects as go

    nodes = module_tree(layers)
    # Widths on a log scale, so that 4, 8, 16 and 32 bits are evenly spaced colours.
    bits = _colours([math.log2(max(node.bits, 1.0)) for node in nodes], "bits", 5, "Viridis",
                    ([math.log2(b) for b in _BIT_TICKS], [str(b) for b in _BIT_TICKS]))
    sparsity = _colours([node.sparsity for node in nodes], "sparsity", 1, "Reds",
                        ([0, 0.25, 0.5, 0.75, 1], ["0%", "25%", "50%", "75%", "100%"]))
    figure = go.Figure(go.Treemap(
        ids=[node.id for node in nodes],
        parents=[node.parent for node in nodes],
        labels=[_plot_text(node.label) for node in nodes],
        # Containers weigh nothing themselves: plotly sums their leaves, so float rounding in
        # the shares can never make a parent smaller than its children (plotly then draws none).
        values=[node.leaf["share"] if node.leaf else 0.0 for node in nodes],
        branchvalues="remainder",
        customdata=[_hover(node) for node in nodes],
        hovertemplate="%{customdata}<extra></extra>",
        texttemplate="%{label}<br>%{percentRoot:.1%}",
        maxdepth=3,
        marker={"showscale": True},
    ))
    figure.plotly_restyle(bits)  # as the menu's first entry does
    buttons = [{"label": "colour: bits", "method": "restyle", "args": [bits]},
               {"label": "colour: sparsity", "method": "restyle", "args": [sparsity]}]
    figure.update_layout(height=620, margin={"t": 40, "l": 8, "r": 8, "b": 8},
                         updatemenus=[{"buttons": buttons, "x": 0, "xanchor": "left",
                                       "y": 1.08, "yanchor": "top", "direction": "down"}])
    return figure


def changes_figure(changes: Sequence[dict[str, Any]]) -> Any:
    """Score change summed by block (the first module-path part), largest change on top."""
    import plotly.graph_objects as go

    blocks: dict[str, list[float]] = {}
    for change in changes:
        blocks.setdefault(change["name"].split("/")[0].split(".")[0], []).append(
            change["score_change"])
    ordered = sorted(blocks.items(), key=lambda item: abs(sum(item[1])))
    totals = [sum(values) for _, values in ordered]
    figure = go.Figure(go.Bar(
        x=totals, y=[_plot_text(name) for name, _ in ordered], orientation="h",
        marker={"color": ["#1e7b34" if total < 0 else "#c0392b" for total in totals]},
        customdata=[f"<b>{_plot_text(name)}</b><br>score change {_change(sum(values))} over "
                    f"{len(values)} changed row(s)" for name, values in ordered],
        hovertemplate="%{customdata}<extra></extra>",
    ))
    figure.update_layout(height=max(240, 22 * len(ordered) + 80),
                         margin={"t": 30, "l": 8, "r": 8, "b": 40},
                         xaxis={"title": {"text": "score change (B - A)"}, "zeroline": True})
    return figure


def _figure(div_id: str, figure: Any) -> str:
    """The figure as a <div> with plotly.js inline (4.6 MB for plotly 7: the python package ships
    only the full bundle, and plotly.js's partial bundles that have a treemap are as large)."""
    import plotly.io as pio

    # No button that would upload the chart (plotly.js 3 has "Share chart..." to its cloud).
    config = {"displaylogo": False, "responsive": True,
              "modeBarButtonsToRemove": ["sendChartToCloud", "sendDataToCloud"]}
    div: str = pio.to_html(figure, include_plotlyjs=True, full_html=False, div_id=div_id,
                           config=config)
    return div


# --- Page parts -----------------------------------------------------------------------------

def _total(key: str, value: float, text: str) -> str:
    """A total with its exact value in data-value, for tests and scripts that read the page."""
    exact = _esc(repr(value))
    return f'<span class="num" id="total-{key}" data-value="{exact}">{_esc(text)}</span>'


_SHOWN_GROUPS = 10


def _warnings(data: dict[str, Any]) -> str:
    items = [f"<li>{_esc(warning)}</li>" for warning in data["warnings"]]
    uncounted = data["uncounted"]
    groups = Counter((u["target"], u["module"]) for u in uncounted)  # as the table groups them
    items += [f"<li>{count} &times; <code>{_esc(target)}</code> in "
              f"<code>{_esc(module or 'the top-level forward')}</code></li>"
              for (target, module), count in list(groups.items())[:_SHOWN_GROUPS]]
    if len(groups) > _SHOWN_GROUPS:
        items.append(f"<li>and {len(groups) - _SHOWN_GROUPS} more groups "
                     "(every node is in <code>--format json</code>)</li>")
    if not items:
        return ""
    head = (f"{len(uncounted)} node(s) not counted: the score leaves them out" if uncounted
            else "Warning")
    return f'<div class="warn" id="warnings"><b>{head}</b><ul>{"".join(items)}</ul></div>'


def _gate(data: dict[str, Any], max_score: float | None, allowed: Sequence[str]) -> str:
    """The verdict as `--max-score` gives it: FAIL while uncounted nodes that `allowed` does
    not accept remain, whatever the score (see `views.blocking_uncounted`)."""
    if max_score is None:
        return ""
    blocked = [u for u in data["uncounted"]
               if not any(fnmatch.fnmatchcase(u["target"], pattern) for pattern in allowed)]
    if blocked:
        return ('<dt>gate</dt><dd id="gate"><span class="fail">FAIL</span>: the count is '
                f"incomplete ({len(blocked)} node(s) not counted), so the score is no verdict</dd>")
    passed = data["score"] <= max_score
    word, css, verdict = ("PASS", "pass", "at or under") if passed else ("FAIL", "fail", "above")
    return (f'<dt>gate</dt><dd id="gate"><span class="{css}">{word}</span>: the score is '
            f"{verdict} --max-score {max_score:g}</dd>")


def _summary(data: dict[str, Any], max_score: float | None, allowed: Sequence[str]) -> str:
    base = data["baseline"]
    freebie = "applied" if data["freebie"] else "not applied"

    def part(key: str, what: str) -> str:
        score = data[key + "_score"]
        return (f"{_total(key, data[key], _exact(data[key]))} / {_esc(_exact(base[key]))} = "
                f"{_total(key + '_score', score, _score(score))} ({what} in 32-bit equivalents)")

    rows = [
        ("params part", part("params", "stored values")),
        ("ops part", part("ops", "operations")),
        ("baseline", _esc(f"{base['name']}, {base['model']} on {base['dataset']} "
                          f"({base['quality']})")),
        ("rule set", _esc(data["rules"])),
        ("input", _esc(f"1x{format_shape(data['input_shape'])}, traced with "
                       f"{data['trace_method']}")),
        ("16-bit freebie", _esc(f"{freebie} ({data['freebie_reason']})")),
    ]
    items = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    return (f'<p class="headline">MicroNet score <b>'
            f'{_total("score", data["score"], _score(data["score"]))}</b> (lower is better)</p>'
            f'{_warnings(data)}<dl class="summary">{items}{_gate(data, max_score, allowed)}</dl>')


def _cell(text: str, value: object = None, css: str = "") -> str:
    """A table cell; `value` (data-v) is what the page's script sorts by."""
    sort = "" if value is None else f' data-v="{_esc(value)}"'
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}{sort}>{_esc(text)}</td>"


def _table(table_id: str, columns: Sequence[tuple[str, bool]], body: Iterable[str],
           foot: str = "") -> str:
    numeric = ' data-type="num"'
    heads = "".join(f"<th{numeric if num else ''}>{_esc(c)}</th>" for c, num in columns)
    return (f'<table class="data sortable" id="{table_id}"><thead><tr>{heads}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody>{foot}</table>')


_LAYER_COLUMNS = (("#", True), ("layer", False), ("op", False), ("output", False),
                  ("params", True), ("sparsity", True), ("bits w/a", False), ("format", False),
                  ("storage", True), ("mults", True), ("adds", True), ("ops", True),
                  ("share", True), ("score", True))


def _layer_row(index: int, layer: dict[str, Any], score: float) -> str:
    bits = "-" if layer["weight_bits"] is None else layer["weight_bits"]
    counts = [_cell(_count(layer[key]), layer[key])
              for key in ("effective_params", "mults", "adds", "effective_ops")]
    return "<tr>" + "".join([
        _cell(str(index), index), _cell(layer["name"], css="name"), _cell(layer["op"], css="text"),
        _cell(format_shape(layer["output_shape"]), css="text"),
        _cell(_exact(layer["params"]), layer["params"]),
        _cell(_percent(layer["sparsity"]) if layer["params"] else "", layer["sparsity"]),
        _cell(f"{bits}/{layer['act_bits']}", css="text"),
        _cell(_FORMATS.get(layer["storage_format"], layer["storage_format"]), css="text"),
        *counts, _cell(_percent(layer["share"]), layer["share"]),
        _cell(_score(layer["share"] * score), layer["share"] * score),
    ]) + "</tr>"


def _layer_table(data: dict[str, Any]) -> str:
    layers = data["layers"]
    total = ["", "total", "", "", _exact(sum(layer["params"] for layer in layers)), "", "", "",
             _count(data["params"]), _count(data["mults"]), _count(data["adds"]),
             _count(data["ops"]), "100%", _score(data["score"])]
    foot = "<tfoot><tr>" + "".join(_cell(text) for text in total) + "</tr></tfoot>"
    body = (_layer_row(i, layer, data["score"]) for i, layer in enumerate(layers, 1))
    return _table("layers", _LAYER_COLUMNS, body, foot)


def _page(title: str, body: Sequence[str]) -> str:
    template = resources.files("micronet_score").joinpath("templates/report.html")
    return Template(template.read_text(encoding="utf-8")).substitute(
        title=_esc(title), body="\n".join(body))


def score_html(data: dict[str, Any], max_score: float | None = None,
               allowed: Sequence[str] = ()) -> str:
    """The page for one JSON report (the keys of `--format json`); `max_score` adds the gate's
    verdict as `--max-score` gives it, `allowed` the uncounted ops it accepts
    (`--allow-uncounted`). Raises KeyError for a missing key."""
    layers = data["layers"]
    chart = (_figure("treemap", treemap_figure(layers)) if data["score"] > 0
             else '<p class="note">The score is 0: there is nothing to draw.</p>')
    return _page(f"MicroNet score {_score(data['score'])}", [
        "<h1>MicroNet score report</h1>", _summary(data, max_score, allowed),
        "<h2>Where the score goes</h2>",
        '<p class="note">Area: share of the score. Click a tile to zoom in, the bar above it to '
        "zoom out; hover for the figures.</p>", chart,
        f"<h2>Layers ({len(layers)})</h2>",
        '<p class="note">Storage and ops in 32-bit equivalents; mults and adds raw. Click a '
        "header to sort.</p>", _layer_table(data),
    ])


def _side(row: dict[str, Any] | None, key: str) -> str:
    if row is None:
        return "-"
    if key == "bits":
        return f"{_bits_range(row['weight_bits'])}/{_bits_range(row['act_bits'])}"
    if key == "sparsity":
        return _percent(row["sparsity"]) if row["params"] else "-"
    return _count(row[key])


def _change_row(change: dict[str, Any]) -> str:
    a, b = change["a"], change["b"]
    either = b or a

    def pair(key: str, numeric: bool = True) -> str:
        left, right = _side(a, key), _side(b, key)
        text = left if left == right else f"{left} -> {right}"
        return _cell(text, either[key]) if numeric else _cell(text, css="text")

    return "<tr>" + "".join([
        _cell(change["name"], css="name"), _cell(change["status"], css="text"),
        pair("params"), pair("effective_params"), pair("effective_ops"),
        pair("bits", numeric=False), pair("sparsity"),
        _cell(_score(a["score"]) if a else "-", a["score"] if a else 0),
        _cell(_score(b["score"]) if b else "-", b["score"] if b else 0),
        _cell(_change(change["score_change"]), change["score_change"],
              "better" if change["score_change"] < 0 else "worse"),
    ]) + "</tr>"


_CHANGE_COLUMNS = (("layer", False), ("change", False), ("params", True), ("storage", True),
                   ("ops", True),
                   ("bits w/a", False), ("sparsity", True), ("score A", True),
                   ("score B", True), ("score change", True))
# The comparison's `params` are stored values in 32-bit equivalents: the terminal's "storage".
_COMPARE_TOTALS = (("score", _score, "score"), ("params_score", _score, "params part"),
                   ("ops_score", _score, "ops part"),
                   ("params", _exact, "storage (32-bit eq.)"), ("ops", _exact, "ops (32-bit eq.)"))


def _delta(value: float, score: bool) -> str:
    return _change(value) if score else format_signed(value, _exact(value))


def compare_html(data: dict[str, Any]) -> str:
    """The page for one JSON comparison (the keys of `compare --format json`: a, b, change,
    rules, baseline, layers). Raises KeyError for a missing key."""
    a, b, delta, base = data["a"], data["b"], data["change"], data["baseline"]
    raw = {side: sum(row[side]["params"] for row in data["layers"] if row[side])
           for side in ("a", "b")}  # values stored, raw count, as the terminal shows them
    a, b = {**a, "raw_params": raw["a"]}, {**b, "raw_params": raw["b"]}
    delta = {**delta, "raw_params": raw["b"] - raw["a"]}
    totals = [
        f"<tr><td>{label}</td><td>{_total('a-' + key, a[key], fmt(a[key]))}</td>"
        f"<td>{_total('b-' + key, b[key], fmt(b[key]))}</td><td>"
        f"{_total('change-' + key, delta[key], _delta(delta[key], fmt is _score))}"
        f"{_esc(_relative(a[key], b[key]))}</td></tr>"
        for key, fmt, label in (*_COMPARE_TOTALS[:3], ("raw_params", _exact, "params"),
                                *_COMPARE_TOTALS[3:])]
    changed = [change for change in data["layers"] if change["status"] != "same"]
    chart = (_figure("changes", changes_figure(changed)) if changed
             else '<p class="note">No row changed.</p>')
    return _page(f"MicroNet score {_score(a['score'])} -> {_score(b['score'])}", [
        "<h1>MicroNet score comparison</h1>",
        f'<p class="headline">MicroNet score <b>{_esc(_score(a["score"]))} &rarr; '
        f'{_esc(_score(b["score"]))}</b>{_esc(_relative(a["score"], b["score"]))}</p>',
        f'<dl class="summary"><dt>A</dt><dd><code>{_esc(a["model"])}</code></dd><dt>B</dt><dd>'
        f'<code>{_esc(b["model"])}</code></dd><dt>rule set</dt><dd>{_esc(data["rules"])}</dd>'
        f'<dt>baseline</dt><dd>{_esc(base["name"])}, {_esc(base["model"])} on '
        f'{_esc(base["dataset"])}</dd></dl>',
        '<table class="data" id="totals"><thead><tr><th></th><th>A</th><th>B</th>'
        f'<th>change</th></tr></thead><tbody>{"".join(totals)}</tbody></table>',
        "<h2>Score change by block</h2>", chart,
        f"<h2>Changed rows ({len(changed)})</h2>",
        f'<p class="note">{len(data["layers"]) - len(changed)} unchanged row(s) not shown. '
        "Click a header to sort.</p>",
        _table("changes", _CHANGE_COLUMNS, (_change_row(change) for change in changed)),
    ])
