"""The HTML report: built from the JSON the CLI prints, self-contained, escaped, and drawn by a real
browser (headless Chromium from the system packages; .ci/run installs it)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from micronet_score.html_report import compare_html, module_tree, score_html, treemap_figure

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "densenet121_gr4_cifar.pt2"
CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = '<script>document.title="PWNED"</script><img id="pwned" src=x>'

# A small net and its torch.ao FX int8 version (stage2 left float), as factories for the CLI.
NETS = '''
import torch
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Block(3, 8)
        self.stage1 = nn.Sequential(Block(8, 8), Block(8, 16))
        self.stage2 = nn.Sequential(Block(16, 16), Block(16, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stage2(self.stage1(self.stem(x)))), 1))


def float_net():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # half of one conv's filters zero, so that sparsity shows
        net.stage1[1].conv.weight[::2] = 0
    return net


def quantized_net():
    example = torch.rand(2, 3, 32, 32)
    mapping = get_default_qconfig_mapping("fbgemm").set_module_name("stage2", None)
    prepared = prepare_fx(float_net(), mapping, (example,))
    prepared(example)
    return convert_fx(prepared)
'''


def _layer(name: str, module: str, share: float, **figures: Any) -> dict[str, Any]:
    """A JSON layer as `--format json` writes it."""
    return {"name": name, "node": name.rpartition("/")[2] or name, "module": module,
            "op": "conv", "target": "aten.conv2d", "output_shape": [1, 8, 4, 4], "params": 100,
            "weight_bits": 8, "act_bits": 8, "sparsity": 0.25, "storage_format": "dense",
            "storage_bits": 800, "mults": 1000, "adds": 900, "effective_params": 25.0,
            "effective_ops": 237.5, "share": share, "note": "", **figures}


def _report(layers: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"score": 0.0123456789012, "params_score": 0.0061728394506,
            "ops_score": 0.0061728394506, "params": 12677.5, "ops": 13095990.0, "mults": 2000,
            "adds": 1800, "freebie": False,
            "freebie_reason": "8-bit weights", "rules": "micronet",
            "baseline": {"name": "wrn", "model": "WideResNet-28-10", "dataset": "CIFAR-100",
                         "params": 400.0, "ops": 3800.0, "input_shape": [3, 32, 32],
                         "quality": "80% top-1"},
            "input_shape": [3, 32, 32], "trace_method": "symbolic_trace", "layers": layers,
            "uncounted": [], "warnings": [], **fields}


def _hostile_report() -> dict[str, Any]:
    return _report(
        [_layer(f"{HOSTILE}.conv", f"{HOSTILE}.conv", 0.5, target=HOSTILE, op=HOSTILE),
         _layer("head", "head", 0.5)],
        rules=HOSTILE, warnings=[HOSTILE], trace_method=HOSTILE,
        uncounted=[{"node": HOSTILE, "target": HOSTILE, "module": HOSTILE}],
    )


def _totals(page: str) -> dict[str, tuple[float, str]]:
    """The totals the page shows: id -> (exact value, text)."""
    found = re.findall(r'id="total-([\w-]+)" data-value="([^"]+)">([^<]*)<', page)
    return {key: (float(value), text) for key, value, text in found}


# --- The page as a string -------------------------------------------------------------------

def test_the_tree_nests_layers_under_their_module_path() -> None:
    layers = [_layer("conv1", "conv1", 0.1),
              _layer("dense1.0/relu_1", "dense1.0", 0.2),
              _layer("dense1.0.conv1", "dense1.0.conv1", 0.3),
              _layer("block", "block", 0.15),  # its module's only node, with modules deeper
              _layer("block.inner.conv", "block.inner.conv", 0.15),
              _layer("add", "", 0.1, params=0, weight_bits=None, act_bits=16)]
    nodes = {node.path if node.leaf is None else f"leaf:{node.path}": node
             for node in module_tree(layers)}
    paths = {node.id: path for path, node in nodes.items()}
    assert {path: (paths.get(node.parent, ""), node.label) for path, node in nodes.items()} == {
        "model": ("", "model"),
        "leaf:conv1": ("model", "conv1"),
        "dense1": ("model", "dense1"),
        "dense1.0": ("dense1", "0"),
        "leaf:dense1.0/relu_1": ("dense1.0", "relu_1"),
        "leaf:dense1.0.conv1": ("dense1.0", "conv1"),
        "block": ("model", "block"),
        "leaf:block": ("block", "block"),
        "block.inner": ("block", "inner"),
        "leaf:block.inner.conv": ("block.inner", "conv"),
        "leaf:add": ("model", "add"),
    }
    dense = nodes["dense1"]
    assert (dense.sums["share"], dense.sums["params"], dense.sparsity) == (0.5, 200, 0.25)
    assert nodes["model"].sums["share"] == pytest.approx(1.0)
    assert (nodes["model"].bits, nodes["leaf:add"].bits) == (8, 16)


def test_the_colour_menu_switches_between_bits_and_sparsity() -> None:
    layers = [_layer("a.conv", "a.conv", 0.5, weight_bits=4, sparsity=0.5),
              _layer("b.conv", "b.conv", 0.5, weight_bits=16, sparsity=0.0)]
    figure = treemap_figure(layers)
    ids = list(figure.data[0].ids)  # root, a, b, then the two convs
    bits, sparsity = (button.args[0]["marker.colors"][0]
                      for button in figure.layout.updatemenus[0].buttons)
    assert (ids, list(figure.data[0].marker.colors)) == (["root", "m1", "m2", "l0", "l1"], bits)
    # log2 of the width; the root has the mean width of its weights, 10 bits.
    assert bits == [math.log2(10), 2.0, 4.0, 2.0, 4.0]
    assert sparsity == [0.25, 0.5, 0.0, 0.5, 0.0]


def test_the_page_is_self_contained_and_shows_the_json_totals() -> None:
    data = _report([_layer("stem.conv", "stem.conv", 0.4), _layer("fc", "fc", 0.6)])
    page = score_html(data, max_score=0.01)
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", page, re.I)
    assert len(page) > 3_000_000  # plotly.js inline
    assert "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';" in page
    assert "Plotly.newPlot" in page
    assert _totals(page) == {
        "score": (0.0123456789012, "0.012346"), "params": (12677.5, "12,677.5"),
        "params_score": (0.0061728394506, "0.006173"), "ops": (13095990.0, "13,095,990"),
        "ops_score": (0.0061728394506, "0.006173")}
    assert '<span class="fail">FAIL</span>: the score is above --max-score 0.01' in page
    assert page.count("<tr><td data-v=") == 2  # one row per layer
    assert 'id="warnings"' not in page


def test_every_string_from_the_report_is_escaped() -> None:
    page = score_html(_hostile_report())
    assert HOSTILE not in page
    assert "<img id=\"pwned\"" not in page
    assert '&lt;img id=&quot;pwned&quot; src=x&gt;' in page  # shown, as text
    assert page.count('<script>document.title') == 0
    assert "1 node(s) not counted" in page

    change = {"name": HOSTILE, "status": "changed", "score_change": -0.1,
              "a": {"name": HOSTILE, "op": HOSTILE, "output_shape": [1], "layers": 1,
                    "params": 10, "sparsity": 0.0, "weight_bits": [32], "act_bits": [32],
                    "storage_format": "dense", "effective_params": 10.0, "mults": 1,
                    "adds": 1, "effective_ops": 1.0, "share": 1.0, "score": 0.2},
              "b": None}
    totals = {"score": 0.2, "params_score": 0.1, "ops_score": 0.1, "params": 10.0, "ops": 1.0}
    comparison = {"a": {"model": HOSTILE, **totals, "freebie": True},
                  "b": {"model": HOSTILE, **totals, "freebie": True},
                  "change": dict.fromkeys(totals, 0.0), "rules": HOSTILE,
                  "baseline": _report([])["baseline"], "layers": [change]}
    assert HOSTILE not in compare_html(comparison)


def test_uncounted_nodes_are_grouped_as_in_the_table() -> None:
    uncounted = [{"node": f"cumsum_{i}", "target": "cumsum", "module": f"blocks.{i % 12}"}
                 for i in range(36)]
    page = score_html(_report([_layer("head", "head", 1.0)], uncounted=uncounted))
    assert "36 node(s) not counted" in page
    assert page.count("3 &times; <code>cumsum</code> in <code>blocks.") == 10
    assert "and 2 more groups" in page
    assert "cumsum_35" not in page  # one line per group, not per node


def test_the_comparison_shows_params_and_storage_as_the_terminal_does() -> None:
    def row(params: int, storage: float) -> dict[str, Any]:
        return {"name": "dense3", "op": "4 nodes", "output_shape": [8], "layers": 4,
                "params": params, "sparsity": 0.5, "weight_bits": [32], "act_bits": [32],
                "storage_format": "sparse", "effective_params": storage, "mults": 10,
                "adds": 9, "effective_ops": 19.0, "share": 1.0, "score": 0.2}

    change = {"name": "dense3", "status": "changed", "score_change": -0.05,
              "a": row(47_900, 23_950.0), "b": row(47_900, 14_200.0)}
    totals = {"score": 0.2, "params_score": 0.1, "ops_score": 0.1, "ops": 19.0}
    comparison = {"a": {"model": "a.pt2", **totals, "params": 23_950.0, "freebie": True},
                  "b": {"model": "b.pt2", **totals, "params": 14_200.0, "freebie": True},
                  "change": {**dict.fromkeys(totals, 0.0), "params": -9_750.0},
                  "rules": "micronet", "baseline": _report([])["baseline"], "layers": [change]}
    page = compare_html(comparison)
    shown = _totals(page)
    assert shown["a-raw_params"] == (47_900.0, "47,900")  # raw params, unchanged by pruning
    assert shown["b-params"] == (14_200.0, "14,200")  # the 32-bit storage, which fell
    assert "<td>storage (32-bit eq.)</td>" in page and "<td>params</td>" in page
    assert "23.9K -&gt; 14.2K" in page  # the row's storage column shows the pruning


def test_plotly_is_imported_only_to_draw() -> None:
    code = "import sys, micronet_score.html_report; print('plotly' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


# --- Real reports, drawn by a browser ---------------------------------------------------------

@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """What `--format json` prints for the bundled sample, the int8 net, and float vs int8 (the
    CLI run in this process: a subprocess would spend seconds importing torch again)."""
    _need_chromium()
    from typer.testing import CliRunner

    from micronet_score.cli import compare_app, score_app

    folder = tmp_path_factory.mktemp("nets")
    (folder / "nets.py").write_text(textwrap.dedent(NETS))
    net = f"{folder / 'nets.py'}:"
    commands = {
        "sample": (score_app, [str(SAMPLE)]),
        "quantized": (score_app, [net + "quantized_net"]),
        "compare": (compare_app, [net + "float_net", net + "quantized_net"]),
    }
    results = {}
    for name, (app, args) in commands.items():
        done = CliRunner().invoke(app, [*args, "--format", "json"])
        assert done.exit_code == 0, done.output
        results[name] = json.loads(done.stdout)
    return results


def _need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")


def _browse(page: str, folder: Path) -> tuple[Path, str]:
    """Open the page in headless Chromium, offline: the screenshot and the DOM after scripts."""
    _need_chromium()
    path, shot = folder / "report.html", folder / "report.png"
    path.write_text(page, encoding="utf-8")
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={folder / 'profile'}", f"--screenshot={shot}",
         "--window-size=1400,1000", "--virtual-time-budget=5000", "--dump-dom",
         path.as_uri()],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    # The page's Content-Security-Policy refuses every fetch: nothing was tried, nothing failed.
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Security Policy" in line or "Uncaught" in line]
    return shot, done.stdout


def _painted(shot: Path, fills: Iterable[str]) -> float:
    """The share of the screenshot's pixels painted in the given `rgb(r, g, b)` colours."""
    from PIL import Image

    wanted = {tuple(int(c) for c in re.findall(r"\d+", fill)) for fill in fills}
    with Image.open(shot) as image:
        counts = image.convert("RGB").getcolors(1 << 22) or []
        total = image.width * image.height
    return sum(count for count, colour in counts if colour in wanted) / total


def _tiles(dom: str) -> list[tuple[str, str]]:
    """(label, fill colour) of each treemap tile plotly drew, in drawing order; a leaf's text is
    its label, a line break, and its share."""
    assert '<g class="trace treemap"' in dom
    return [(label.split("&lt;br&gt;")[0], fill) for fill, label in re.findall(
        r'<g class="slice[^"]*"><path class="surface"[^>]*?fill: (rgb\([^)]*\))[^>]*></path>'
        r'<g class="slicetext"><text [^>]*?data-unformatted="([^"]*)"', dom)]


def _bars(dom: str) -> list[str]:
    """The fill colour of each bar plotly drew."""
    assert '<g class="trace bars"' in dom
    return re.findall(r'<g class="point"><path [^>]*?fill: (rgb\([^)]*\))', dom)


@pytest.mark.parametrize("name", ["sample", "quantized"])
def test_the_browser_draws_the_treemap_and_the_totals(
        name: str, reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    data = reports[name]
    # Click the "ops" header once, as a user would, after the page's own scripts.
    click = '<script>document.querySelectorAll("#layers th")[11].click()</script></body>'
    shot, dom = _browse(score_html(data).replace("</body>", click), tmp_path)
    tiles = _tiles(dom)
    assert _painted(shot, (fill for _, fill in tiles)) > 0.3  # the tiles are on the screenshot
    blocks = {layer["module"].split(".")[0] for layer in data["layers"] if layer["module"]}
    colour = dict(reversed(tiles))  # a block's own tile comes before tiles with its name inside
    assert tiles[0][0] == "model" and len(tiles) > len(blocks) and blocks <= set(colour)
    # 32-bit weights all over the float sample; int8 beside the float stage2 when quantized.
    pairs = ("dense1", "trans1") if name == "sample" else ("stage1", "stage2")
    assert (colour[pairs[0]] == colour[pairs[1]]) == (name == "sample")
    shown = _totals(dom)
    for key in ("score", "params_score", "ops_score", "params", "ops"):
        assert shown[key][0] == data[key]
    assert shown["score"][1] == f"{data['score']:.6f}"
    body = re.search(r'<table class="data sortable" id="layers">.*?<tbody>(.*?)</tbody>', dom)
    assert body is not None
    cells = [re.findall(r"<td([^>]*)>", row)[11] for row in body[1].split("</tr>")[:-1]]
    ops = [float(re.findall(r'data-v="([^"]*)"', cell)[0]) for cell in cells]
    assert ops == sorted(layer["effective_ops"] for layer in data["layers"])  # as numbers
    assert '<th data-type="num" aria-sort="ascending">ops</th>' in dom
    assert ('id="warnings"' in dom) == bool(data["warnings"])  # the 10-class fc vs CIFAR-100


def test_the_browser_draws_the_comparison(
        reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    data = reports["compare"]
    shot, dom = _browse(compare_html(data), tmp_path)
    # Bars on plotly's plot background, on the screenshot.
    assert _painted(shot, ["rgb(229, 236, 246)"]) > 0.1
    assert _painted(shot, _bars(dom)) > 0.005
    changed = [change for change in data["layers"] if change["status"] != "same"]
    blocks: dict[str, float] = {}
    for change in changed:
        block = change["name"].split("/")[0].split(".")[0]
        blocks[block] = blocks.get(block, 0.0) + change["score_change"]
    # Green where the score went down, red where it went up (stage2 lost the 16-bit freebie).
    assert sorted(_bars(dom)) == sorted(
        "rgb(30, 123, 52)" if total < 0 else "rgb(192, 57, 43)" for total in blocks.values())
    assert blocks["stage2"] > 0 > blocks["stage1"]
    for block in blocks:
        assert f'data-unformatted="{block}"' in dom
    shown = _totals(dom)
    for key in ("score", "params_score", "ops_score", "params", "ops"):
        assert (shown[f"a-{key}"][0], shown[f"b-{key}"][0], shown[f"change-{key}"][0]) == (
            data["a"][key], data["b"][key], data["change"][key])
    assert dom.count("<tr><td class=\"name\"") == len(changed)


def test_nothing_from_the_report_runs_in_the_browser(tmp_path: Path) -> None:
    _, dom = _browse(score_html(_hostile_report()), tmp_path)
    assert '<img id="pwned"' not in dom  # shown as text (&lt;img id="pwned" ...), not an element
    assert "&amp;quot;" not in dom  # and shown as written: plotly does not decode &quot;
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title is not None and title[1] == "MicroNet score 0.012346"  # no script ran
    assert '<g class="trace treemap"' in dom
