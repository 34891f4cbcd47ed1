"""The command line's reports: table columns and totals, --depth/--sort/--top, compare, colours and
pipes, narrow terminals, the gate, bad input for score and compare, and the installed script.

The small model is counted by hand (32-bit, no freebie, input 1x4x4, P = 16 positions):
  stem   1x1 conv 1->2, no bias:    2 params, mults 2*16 = 32,          adds 0
  stage1.N (a block, twice):        1x1 conv 2->2 (4 params): mults 4*16 = 64, adds 2*16 = 32;
                                    relu 32 mults; residual add 32 adds
  mean over H, W:                   mults 2, adds 32 - 2 = 30
  head   linear 2->3 with bias:     9 params, mults 6, adds 3 + 3 = 6
so at depth 1: stem 2/32/0, stage1 8/192/128, mean 0/2/30, head 9/6/6; total 19 params, 232 mults,
164 adds, 396 ops. Against a baseline of 100 params and 1,000 ops the score is 0.19 + 0.396.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from micronet_score.cli import compare_app, rules_app, score_app

runner = CliRunner()
SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, c, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.relu(self.conv(x))


    class Small(nn.Module):
        def __init__(self, blocks: int = 2) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 2, 1, bias=False)
            self.stage1 = nn.Sequential(*(Block(2) for _ in range(blocks)))
            self.head = nn.Linear(2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stage1(self.stem(x)).mean([2, 3]))


    class Nested(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features_with_a_long_name = nn.Sequential(
                *(Small() for _ in range(2))
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.features_with_a_long_name[1](x) + self.features_with_a_long_name[0](x)


    def fill(model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for index, p in enumerate(model.parameters()):
                values = torch.arange(1, p.numel() + 1, dtype=torch.float32)
                p.copy_(values.reshape(p.shape) + index)
        return model.eval()


    def build(blocks: int = 2, prune: bool = False) -> nn.Module:
        model = fill(Small(blocks))
        if prune:
            with torch.no_grad():
                model.stage1[0].conv.weight[0, 0] = 0.0
        return model


    def nested() -> nn.Module:
        return fill(Nested())
    """
)
BASELINE = (
    "model: Tiny\ndataset: none\nparams: 100\nops: 1000\ninput_shape: [1, 4, 4]\nquality: n/a\n"
)
SCORE = 19 / 100 + 396 / 1000
ANSI = re.compile(r"\x1b\[([0-9;]*)m")


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "small.py").write_text(SOURCE)
    (tmp_path / "tiny.yaml").write_text(BASELINE)
    return {
        "model": f"{tmp_path / 'small.py'}:build",
        "smaller": f"{tmp_path / 'small.py'}:build",
        "nested": f"{tmp_path / 'small.py'}:nested",
        "baseline": str(tmp_path / "tiny.yaml"),
        "tmp": str(tmp_path),
    }


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(score_app, list(args), env=env)


def score_args(files: dict[str, str], *extra: str) -> list[str]:
    return [files["model"], "--baseline", files["baseline"], "--no-freebie", *extra]


def markdown_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `") or line.startswith("| **total**"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("`*")] = cells[1:]
    return rows


def test_table_columns_totals_and_summary(files: dict[str, str]) -> None:
    result = run(*score_args(files), env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "op", "output", "params", "sparsity", "bits", "storage",
                                "mults", "adds", "ops", "share"]
    rows = {line.split()[0]: line.split() for line in lines[2:11]}
    assert list(rows) == ["stem", "stage1.0.conv", "stage1.0/relu", "stage1.0/add",
                          "stage1.1.conv", "stage1.1/relu_1", "stage1.1/add_1", "mean", "head"]
    assert rows["stage1.0.conv"][1:10] == ["conv", "2x4x4", "4", "0%", "32/32", "4", "64", "32",
                                           "96"]
    assert rows["head"][1:10] == ["linear", "3", "9", "0%", "32/32", "9", "6", "6", "12"]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split() == ["total", "19", "0%", "32/32", "19", "232", "164", "396", "100.0%"]
    assert f"score:       {SCORE:.6f}" in text
    assert "params part: 19 / 100 = 0.190000" in text
    assert "ops part:    396 / 1,000 = 0.396000" in text
    assert "baseline:    tiny, Tiny on none: 100 params, 1,000 ops (n/a)" in text
    assert "rule set:    micronet" in text
    assert "16-bit freebie: not applied (turned off by the user)" in text
    assert result.stderr == ""  # no status line off a terminal


def test_depth_sums_match_the_hand_count(files: dict[str, str]) -> None:
    result = run(*score_args(files, "--depth", "1", "--format", "markdown"))
    assert result.exit_code == 0, result.output
    rows = markdown_rows(result.stdout)
    # columns: op, output, params, sparsity, bits, storage, mults, adds, ops, share
    assert list(rows) == ["stem", "stage1", "mean", "head", "total"]
    assert rows["stem"][2:9] == ["2", "0%", "32/32", "2", "32", "0", "32"]
    assert rows["stage1"][:9] == ["6 nodes", "2x4x4", "8", "0%", "32/32", "8", "192", "128", "320"]
    assert rows["mean"][2:9] == ["0", "", "-/32", "0", "2", "30", "32"]
    assert rows["head"][2:9] == ["9", "0%", "32/32", "9", "6", "6", "12"]
    assert rows["total"][2:] == ["19", "0%", "32/32", "19", "232", "164", "396", "100.0%"]
    assert rows["stage1"][9] == f"{(8 / 100 + 320 / 1000) / SCORE:.1%}"
    two = markdown_rows(run(*score_args(files, "--depth", "2", "--format", "markdown"))
                        .stdout)
    assert list(two) == ["stem", "stage1.0", "stage1.1", "mean", "head", "total"]
    assert two["stage1.0"][2:9] == two["stage1.1"][2:9] == ["4", "0%", "32/32", "4", "96", "64",
                                                             "160"]


def test_depth_in_the_terminal_table(files: dict[str, str]) -> None:
    text = run(*score_args(files, "--depth", "1")).stdout
    names = [line.split()[0] for line in text.splitlines()[2:6]]
    assert names == ["stem", "stage1", "mean", "head"]
    stage = next(line for line in text.splitlines() if line.startswith("stage1"))
    assert stage.split()[1:3] == ["6", "nodes"]
    assert "8  " in stage and "320" in stage


def test_sort_and_top(files: dict[str, str]) -> None:
    by_score = markdown_rows(run(*score_args(files, "--depth", "1", "--sort", "score",
                                              "--format", "markdown")).stdout)
    assert list(by_score) == ["stage1", "head", "stem", "mean", "total"]
    top = run(*score_args(files, "--depth", "1", "--top", "2"))
    text = top.stdout
    names = [line.split()[0] for line in text.splitlines()[2:4]]
    assert names == ["stage1", "head"]  # the two heaviest, in graph order
    assert "stem " not in text
    assert "2 of 4 rows not shown (--top 2); the totals cover all of them" in text
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert "396" in total.split() and "100.0%" in total.split()
    ranked = run(*score_args(files, "--top", "3", "--sort", "score", "--format", "markdown"))
    rows = markdown_rows(ranked.stdout)
    assert list(rows) == ["stage1.0.conv", "stage1.1.conv", "head", "total"]
    assert "6 of 9 rows not shown (--top 3)" in ranked.stdout


def test_no_ansi_when_piped_and_no_color_respected(files: dict[str, str]) -> None:
    plain = run(*score_args(files, "--max-score", "1"))
    assert "\x1b" not in plain.stdout
    coloured = run(*score_args(files, "--max-score", "1"), env={"FORCE_COLOR": "1"})
    codes = {p for m in ANSI.findall(coloured.stdout) for p in m.split(";")}
    assert "36" in codes  # the share bars are cyan on a terminal
    no_color = run(*score_args(files, "--max-score", "1"),
                   env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert no_color.exit_code == 0
    params = {p for m in ANSI.findall(no_color.stdout) for p in m.split(";")}
    colours = {p for p in params if p and (30 <= int(p) <= 49 or 90 <= int(p) <= 107)}
    assert colours == set()
    assert "score:" in ANSI.sub("", no_color.stdout)


@pytest.mark.parametrize("columns", ["30", "45", "56"])
def test_a_narrow_terminal_never_cuts_a_number(files: dict[str, str], columns: str) -> None:
    """Below the table's 64-column floor, lines run past the terminal instead of `8.…`."""
    options = ["--baseline", files["baseline"], "--depth", "1"]
    for app, models in ((compare_app, [files["nested"], files["nested"]]),
                        (score_app, [files["nested"]])):
        result = runner.invoke(app, [*models, *options], env={"COLUMNS": columns})
        assert result.exit_code == 0, result.output
        assert "…" not in result.stdout
        lines = [line for line in result.stdout.splitlines() if files["tmp"] not in line]
        assert max(len(line) for line in lines) <= 64  # the paths of A and B aside


def test_80_columns_keeps_every_figure_legible(files: dict[str, str]) -> None:
    result = run(files["nested"], "--baseline", files["baseline"], "--no-freebie",
                 env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    table = text[: text.index("\n\n")].splitlines()
    assert all(len(line) <= 80 for line in table), text
    header = table[0].split()
    assert {"layer", "params", "bits", "storage", "ops", "share"} <= set(header)
    # A dense model's sparsity column (all 0%) goes before the others; mults and adds always.
    assert {"mults", "adds", "sparsity"}.isdisjoint(header)
    assert "…" not in text
    assert re.search(r"not shown at 80 columns: .*sparsity, mults, adds \(see --format csv\)",
                     text)
    total = next(line for line in table if line.startswith("total"))
    assert total.split()[:4] == ["total", "38", "32/32", "38"]
    # Two models' worth of each row; names wrap after a dot, the numbers stay on one line.
    conv_rows = [line for line in table if re.search(r"\s4\s+32/32\s+4\s+96\s", line)]
    assert len(conv_rows) == 4
    squeezed = re.sub(r"\s+", "", "".join(line.split("  ")[0] for line in table))
    assert "features_with_a_long_name.1.stage1.0.conv" in squeezed


def test_machine_formats_ignore_the_view(files: dict[str, str]) -> None:
    csv_text = run(*score_args(files, "--depth", "1", "--top", "1", "--format", "csv"))
    lines = csv_text.stdout.strip().splitlines()
    assert len(lines) == 1 + 9  # header and one row per layer
    assert lines[1].startswith("stem,stem,conv,Conv2d,2x4x4,2,32,32,0.0,dense,2.0,32,0,32.0,")
    data = json.loads(run(*score_args(files, "--depth", "1", "--format", "json"))
                      .stdout)
    assert len(data["layers"]) == 9
    assert (data["params"], data["mults"], data["adds"], data["ops"]) == (19, 232, 164, 396)
    assert data["score"] == pytest.approx(SCORE)


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "markdown"])
def test_output_file_for_every_format(files: dict[str, str], fmt: str) -> None:
    target = Path(files["tmp"]) / f"report.{fmt}"
    result = run(*score_args(files, "--format", fmt, "--output", str(target)),
                 env={"FORCE_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    written = target.read_text()
    assert "\x1b" not in written
    assert {"table": "score:", "json": '"score"', "csv": "name,module,op",
            "markdown": "**MicroNet score:"}[fmt] in written


def test_output_to_a_missing_folder_is_one_line(files: dict[str, str]) -> None:
    target = Path(files["tmp"]) / "no" / "such" / "report.json"
    result = run(*score_args(files, "--format", "json", "--output", str(target)))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot write")
    assert len(result.stderr.strip().splitlines()) == 1


def test_gate_exit_codes_and_verdict(files: dict[str, str]) -> None:
    passed = run(*score_args(files, "--max-score", f"{SCORE}"))
    assert passed.exit_code == 0
    assert passed.stderr.splitlines() == [
        f"PASS: score {SCORE:.6f} is at or under --max-score {SCORE:g}"
    ]
    assert f"gate:        PASS, the score is at or under --max-score {SCORE:g}" in passed.stdout
    failed = run(*score_args(files, "--max-score", "0.5", "--format", "json"))
    assert failed.exit_code == 1
    assert failed.stderr.splitlines() == [
        f"FAIL: score {SCORE:.6f} is above --max-score 0.5"
    ]
    assert json.loads(failed.stdout)["score"] == pytest.approx(SCORE)


def test_unmatched_bits_pattern_is_a_warning(files: dict[str, str]) -> None:
    table = run(*score_args(files, "--bits", "stage9=8/8", "--bits", "stage1=16/16"))
    assert table.exit_code == 0
    assert "warning: --bits pattern 'stage9' matches no module" in table.stdout
    assert "stage1" not in "".join(
        line for line in table.stdout.splitlines() if line.startswith("warning")
    )
    as_json = run(*score_args(files, "--bits", "stage9=8/8", "--format", "json"))
    assert as_json.exit_code == 0
    assert as_json.stderr.splitlines() == [
        "warning: --bits pattern 'stage9' matches no module"
    ]
    assert json.loads(as_json.stdout)["warnings"] == [
        "--bits pattern 'stage9' matches no module"
    ]


def test_bits_in_the_table(files: dict[str, str]) -> None:
    text = run(*score_args(files, "--bits", "stage1=8/8", "--depth", "1"),
               env={"COLUMNS": "160"}).stdout
    stage = next(line for line in text.splitlines() if line.startswith("stage1"))
    assert "8/8" in stage.split()
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert "8..32/8..32" in total.split()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--depth", "0"], "Invalid value for '--depth'"),
        (["--top", "0"], "Invalid value for '--top'"),
        (["--sort", "size"], "Invalid value for '--sort'"),
        (["--format", "yaml"], "Invalid value for '--format'"),
        (["--weight-bits", "0"], "Invalid value for '--weight-bits'"),
    ],
)
def test_bad_options_exit_2(files: dict[str, str], args: list[str], message: str) -> None:
    result = run(*score_args(files, *args))
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_file_of_unknown_format_is_one_line(files: dict[str, str]) -> None:
    junk = Path(files["tmp"]) / "model.onnx"
    junk.write_text("not a model\n")
    result = run(str(junk))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


# --- compare -------------------------------------------------------------------------------

def compare_args(files: dict[str, str], *extra: str) -> list[str]:
    return [files["model"], files["smaller"], "--baseline", files["baseline"], "--no-freebie",
            "--arch-kwargs", "{}", *extra]


def test_compare_json_rows_and_order(tmp_path: Path, files: dict[str, str]) -> None:
    (tmp_path / "smaller.py").write_text(
        SOURCE + "\n\ndef smaller() -> nn.Module:\n    return build(blocks=1, prune=True)\n"
    )
    b = f"{tmp_path / 'smaller.py'}:smaller"
    result = runner.invoke(compare_app, [files["model"], b, "--baseline", files["baseline"],
                                         "--no-freebie", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["a"]["model"] == files["model"] and data["b"]["model"] == b
    assert data["a"]["score"] == pytest.approx(SCORE)
    assert data["change"]["score"] == pytest.approx(data["b"]["score"] - data["a"]["score"])
    layers = {row["name"]: row for row in data["layers"]}
    assert {n for n, r in layers.items() if r["status"] == "removed"} == {
        "stage1.1.conv", "stage1.1/relu_1", "stage1.1/add_1"
    }
    assert {n for n, r in layers.items() if r["status"] == "changed"} == {"stage1.0.conv"}
    pruned = layers["stage1.0.conv"]
    assert (pruned["a"]["mults"], pruned["b"]["mults"]) == (64, 48)  # one zero weight: 16 fewer
    assert (pruned["a"]["adds"], pruned["b"]["adds"]) == (32, 16)  # its channel has no adds
    assert pruned["b"]["sparsity"] == 0.25
    assert pruned["score_change"] == pytest.approx(pruned["b"]["score"] - pruned["a"]["score"])
    assert layers["stage1.1.conv"]["score_change"] == pytest.approx(-(4 / 100 + 96 / 1000))
    assert [row["name"] for row in data["layers"][:4]] == [
        "stage1.1.conv", "stage1.0.conv", "stage1.1/relu_1", "stage1.1/add_1"
    ]
    sizes = [abs(row["score_change"]) for row in data["layers"]]
    assert sizes == sorted(sizes, reverse=True)
    assert sum(row["score_change"] for row in data["layers"]) == pytest.approx(
        data["change"]["score"]
    )

    table = runner.invoke(compare_app, [files["model"], b, "--baseline", files["baseline"],
                                        "--no-freebie"], env={"COLUMNS": "80"})
    assert table.exit_code == 0, table.output
    text = table.stdout
    assert "\x1b" not in text
    assert all(len(line) <= 80 for line in text.splitlines() if not line.startswith(("A:", "B:")))
    score_line = next(line for line in text.splitlines() if line.startswith("score "))
    assert score_line.split()[1] == f"{SCORE:.6f}"
    body = text[text.index("score change"):].splitlines()[2:]
    assert [line.split()[:2] for line in body] == [
        ["stage1.1.conv", "removed"], ["stage1.0.conv", "changed"],
        ["stage1.1/relu_1", "removed"], ["stage1.1/add_1", "removed"],
    ]
    # One weight of four pruned: the same parameter count, a quarter less storage (a 1-bit mask
    # per weight: 3 x 32 + 4 bits = 3.125 values) and a third less ops.
    assert body[1].split()[2:5] == ["4", "4→3.1", "96→64"]
    assert "not shown at 80 columns: sparsity" in text
    storage = next(line for line in text.splitlines() if line.startswith("storage"))
    assert storage.split()[3:] == ["19", "14.12", "-4.88", "(-25.7%)"]
    assert "5 unchanged rows not shown" in text

    by_stage = runner.invoke(compare_app, [files["model"], b, "--baseline", files["baseline"],
                                           "--no-freebie", "--depth", "1", "--format",
                                           "markdown", "--top", "1"])
    assert by_stage.exit_code == 0, by_stage.output
    rows = markdown_rows(by_stage.stdout)
    assert list(rows) == ["stage1"]
    assert rows["stage1"][:4] == ["changed", "8 → 4", "8 → 3.1", "320 → 128"]
    assert "| score | " in by_stage.stdout


def test_compare_same_model_and_output_file(files: dict[str, str]) -> None:
    target = Path(files["tmp"]) / "compare.md"
    result = runner.invoke(compare_app, [*compare_args(files), "--format", "markdown",
                                         "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    text = target.read_text()
    assert f"{SCORE:.6f} → {SCORE:.6f}" in text
    assert "9 unchanged rows not shown" in text
    table = runner.invoke(compare_app, compare_args(files))
    assert "no layer changed" in table.stdout
    plain = Path(files["tmp"]) / "compare.txt"
    written = runner.invoke(compare_app, [*compare_args(files), "--output", str(plain)],
                            env={"FORCE_COLOR": "1"})
    assert written.exit_code == 0, written.output
    assert written.stdout == ""
    text = plain.read_text()
    assert "\x1b" not in text
    assert text.splitlines()[2].split()[:3] == ["score", f"{SCORE:.6f}", f"{SCORE:.6f}"]


@pytest.mark.parametrize(
    ("extra", "second", "message"),
    [
        ([], "missing.pt", "model file not found: missing.pt"),
        ([], "{truncated}", "cannot read"),
        ([], "{weights}", "--arch"),
        ([], "nomodule_xyz.sub:build", "cannot import"),
        (["--rules", "nope"], None, "valid names:"),
        (["--baseline", "nope"], None, "valid names: wrn"),  # the last --baseline wins
        (["--input-shape", "3,x"], None, "malformed --input-shape"),
        (["--input-shape", "5,4,4"], None, "does not run on the given input shape"),
        (["--bits", "stage1"], None, "malformed bit declaration"),
        (["--arch", "nomodule_xyz:build"], "{weights}", "cannot import"),
    ],
)
def test_compare_bad_input_is_one_line_and_exit_2(
    files: dict[str, str], extra: list[str], second: str | None, message: str
) -> None:
    truncated = Path(files["tmp"]) / "truncated.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    weights = Path(files["tmp"]) / "weights.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), weights)
    named = {"{truncated}": str(truncated), "{weights}": str(weights)}
    b = named.get(second, second) if second else files["model"]
    result = runner.invoke(compare_app,
                           [files["model"], b, "--baseline", files["baseline"], *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_compare_warnings_name_the_model(files: dict[str, str]) -> None:
    result = runner.invoke(compare_app, [*compare_args(files), "--bits", "stage9=8",
                                         "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [  # the same warning for both is said once
        "A and B: warning: --bits pattern 'stage9' matches no module",
    ]
    json.loads(result.stdout)


# --- entry points --------------------------------------------------------------------------

def test_version_rules_and_help_stay_light() -> None:
    """--help, --version and rules never import torch (nor rich); python -m is the same command."""
    probe = (
        "import sys\nfrom micronet_score.cli import main\ncode = 0\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as done:\n    code = done.code\n"
        "heavy = sorted(m for m in ('torch', 'rich') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', heavy)\n"
    )
    for args in (["--help"], ["--version"], ["rules"], ["compare", "--help"], ["rules", "--help"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                              text=True, timeout=60)
        assert done.stdout.strip().endswith("EXIT 0 HEAVY []"), (args, done.stdout, done.stderr)
    listing = subprocess.run([sys.executable, "-m", "micronet_score", "rules"],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0
    assert listing.stdout == runner.invoke(rules_app, []).stdout
    version = subprocess.run([sys.executable, "-m", "micronet_score", "compare", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("micronet-score ")


def test_installed_console_script_on_an_exported_file(tmp_path: Path, files: dict[str, str]
                                                      ) -> None:
    script = shutil.which("micronet-score", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is not installed (pip install -e .)"
    sys.path.insert(0, str(tmp_path))
    try:
        small = importlib.import_module("small")
    finally:
        sys.path.remove(str(tmp_path))
    path = tmp_path / "small.pt2"
    program = torch.export.export(small.build(), (torch.zeros(1, 1, 4, 4),))
    torch.export.save(program, path)
    done = subprocess.run(
        [script, str(path), "--baseline", files["baseline"], "--no-freebie", "--depth", "1",
         "--max-score", "0.5"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"},
    )
    assert done.returncode == 1, done.stderr  # 0.586 is above the bar
    assert done.stderr.strip() == f"FAIL: score {SCORE:.6f} is above --max-score 0.5"
    assert "\x1b" not in done.stdout
    total = next(line for line in done.stdout.splitlines() if line.startswith("total"))
    assert total.split()[:2] == ["total", "19"]
    assert f"score:       {SCORE:.6f}" in done.stdout
    assert "input 1x1x4x4" in done.stdout  # the shape recorded in the exported program


# --- what the reports show ---------------------------------------------------------------------

SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "densenet121_gr4_cifar.pt2"


def test_the_bundled_sample_at_80_columns_breaks_between_fields() -> None:
    result = run(str(SAMPLE), "--depth", "1", "--max-score", "0.02", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = [*result.stdout.splitlines(), *result.stderr.splitlines()]
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert all(line == line.rstrip() for line in lines)  # piped rows carry no trailing spaces
    text = result.stdout
    assert ("baseline:    wrn, WideResNet-28-10 on CIFAR-100: 36,500,000 params,\n"
            "             10,490,000,000 ops (80% top-1)\n") in text
    # (119,146 values - 928 folded BatchNorm scales) x 16 bits / 32; biases stored dense
    assert "params part: 59,109 / 36,500,000 = 0.001619 (storage, 32-bit equivalents)\n" in text
    assert "ops part:    22,008,128 / 10,490,000,000 = 0.002098 (32-bit equivalents)\n" in text
    assert result.stderr.splitlines()[-1] == "PASS: score 0.003717 is at or under --max-score 0.02"


def test_shapes_are_per_example_in_every_format(files: dict[str, str]) -> None:
    data = json.loads(run(*score_args(files, "--format", "json")).stdout)
    shapes = {layer["name"]: layer["output_shape"] for layer in data["layers"]}
    assert (shapes["stem"], shapes["mean"], shapes["head"]) == ([2, 4, 4], [2], [3])
    assert data["input_shape"] == [1, 4, 4]
    csv_rows = run(*score_args(files, "--format", "csv")).stdout.splitlines()
    assert [row.split(",")[4] for row in csv_rows[1:]][-2:] == ["2", "3"]
    table = run(*score_args(files), env={"COLUMNS": "160"}).stdout
    head = next(line for line in table.splitlines() if line.startswith("head"))
    assert head.split()[2] == "3"


def test_strict_names_the_uncounted_nodes(tmp_path: Path) -> None:
    (tmp_path / "scan.py").write_text(textwrap.dedent(
        """
        import torch
        from torch import nn


        class Mix(nn.Module):
            def forward(self, x):
                return torch.special.bessel_j0(torch.special.bessel_j0(torch.special.bessel_j0(x)))


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.mix = Mix()
                self.head = nn.Linear(4, 2)

            def forward(self, x):
                return self.head(torch.cummax(self.mix(x), 1).values)


        def build():
            return Net()
        """
    ))
    args = [f"{tmp_path / 'scan.py'}:build", "--input-shape", "4", "--baseline", "wrn"]
    table = run(*args, env={"COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    listed = [line for line in table.stdout.splitlines() if line.startswith("uncounted")]
    assert listed == ["uncounted:   3 \u00d7 special_bessel_j0 in mix",
                      "uncounted:   1 \u00d7 cummax in the top-level forward"]
    markdown = run(*args, "--format", "markdown").stdout
    assert "- uncounted: 3 \u00d7 special_bessel_j0 in mix\n" in markdown
    strict = run(*args, "--strict")
    assert strict.exit_code == 2
    assert strict.stderr.splitlines()[-1] == (
        "error: 4 nodes not counted (--strict): 3 \u00d7 special_bessel_j0 in mix, "
        "1 \u00d7 cummax in the top-level forward"
    )
