"""Every figure the README shows comes from a command that reproduces it exactly.

The tables whose first column is a `micronet-score ...` command are parsed from README.md and each
command is run (in process, through the console script's own path); its params, ops and score
must equal the row's figures as printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from micronet_score.cli import score_app
from micronet_score.cli_support import run_app

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `(micronet-score [^`]+)` \| ([\d,]+) \| ([\d,]+) \| ([\d.]+)")


def table_rows() -> list[tuple[str, int, int, str]]:
    rows = []
    for line in README.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            command, params, ops, score = match.groups()
            rows.append((command, int(params.replace(",", "")), int(ops.replace(",", "")), score))
    return rows


def test_the_readme_has_command_tables() -> None:
    assert len(table_rows()) >= 4


@pytest.mark.parametrize(("command", "params", "ops", "score"), table_rows())
def test_a_readme_row_is_what_its_command_prints(
    command: str, params: int, ops: int, score: str
) -> None:
    args = [*shlex.split(command)[1:], "--format", "json"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_app(score_app, args, "micronet-score")
    assert code == 0, err.getvalue()
    data = json.loads(out.getvalue())
    assert (data["params"], data["ops"]) == (params, ops)
    assert f"{data['score']:.{len(score.split('.')[1])}f}" == score


def test_the_worked_example_is_what_the_command_prints() -> None:
    """The README's console block, between the command and `$ echo $?`, is the command's stdout
    then stderr at 80 columns, character for character."""
    import os
    import subprocess
    import sys

    text = README.read_text(encoding="utf-8")
    command = "micronet-score sample_models/densenet121_gr4_cifar.pt2 --depth 1 --max-score 0.02"
    start = text.index(f"$ {command}\n") + len(command) + 3
    shown = text[start:text.index("$ echo $?\n", start)]
    done = subprocess.run(
        [sys.executable, "-m", "micronet_score", *shlex.split(command)[1:]],
        capture_output=True, text=True, timeout=120, cwd=README.parent,
        env={**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "dumb"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == shown
    assert max(len(line) for line in shown.splitlines()) <= 80
