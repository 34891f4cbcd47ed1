"""Options that can be checked without the model are checked before it is loaded: a typo in
--baseline, --rules, --bits, --input-shape, --arch-kwargs or --output costs no wait.

The factory below records being imported and being called in marker files; every bad option
must fail (exit 2, one line) in well under a second with neither marker written, and without
importing torch at all when run as the console script does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from micronet_score.cli import compare_app, score_app

FACTORY = textwrap.dedent(
    """
    from pathlib import Path

    HERE = Path(__file__).parent
    (HERE / "imported.marker").write_text("imported")


    def build():
        (HERE / "called.marker").write_text("called")
        from torch import nn

        return nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    """
)
runner = CliRunner()


@pytest.fixture()
def factory(tmp_path: Path) -> Path:
    source = tmp_path / "slow_factory.py"
    source.write_text(FACTORY)
    return source


def bad_options(tmp_path: Path, source: Path) -> list[tuple[list[str], str]]:
    """(extra arguments, what the one error line says) for each option checked up front."""
    (tmp_path / "a_folder").mkdir(exist_ok=True)
    return [
        (["--baseline", "nope"], "valid names: wrn"),
        (["--rules", "nope"], "valid names:"),
        (["--bits", "stage1"], "malformed bit declaration 'stage1'"),
        (["--bits", "stage1=99"], "bit width out of range"),
        (["--weight-bits", "65"], "bit width out of range"),
        (["--input-shape", "3,x"], "malformed --input-shape '3,x'"),
        (["--input-shape", "3,30000,30000"], "over the limit of 33,554,432"),
        (["--arch-kwargs", "{"], "--arch-kwargs is not valid JSON"),
        (["--arch-kwargs", "[]"], "--arch-kwargs must be a JSON object"),
        (["--output", str(tmp_path / "missing" / "report.json")], "No such file or directory"),
        (["--output", str(tmp_path / "a_folder")], "it is a folder"),
        (["--output", str(source)], "is an input of this command"),
    ]


def test_each_bad_option_fails_before_the_model_is_loaded(tmp_path: Path, factory: Path
                                                          ) -> None:
    spec = f"{factory}:build"
    for extra, message in bad_options(tmp_path, factory):
        for app, models in ((score_app, [spec]), (compare_app, [spec, spec])):
            start = time.perf_counter()
            result = runner.invoke(app, [*models, "--input-shape", "3,4,4", *extra])
            elapsed = time.perf_counter() - start
            assert result.exit_code == 2, (extra, result.output)
            assert message in result.stderr, (extra, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert elapsed < 1.0, (extra, elapsed)
            assert sorted(p.name for p in tmp_path.glob("*.marker")) == [], extra
    assert factory.read_text() == FACTORY  # --output named it: refused, not replaced
    # The same factory with good options is imported and called: the markers work.
    assert runner.invoke(score_app, [spec, "--input-shape", "3,4,4"]).exit_code == 0
    assert sorted(p.name for p in tmp_path.glob("*.marker")) == ["called.marker",
                                                                 "imported.marker"]


def test_a_bad_option_never_imports_torch(tmp_path: Path, factory: Path) -> None:
    """As the console script runs: each bad option ends with exit 2 and torch not imported."""
    cases = [extra for extra, _ in bad_options(tmp_path, factory)]
    probe = textwrap.dedent(
        """
        import json, sys
        from micronet_score.cli import main
        codes = []
        for args in json.loads(sys.argv[1]):
            try:
                main(args)
            except SystemExit as done:
                codes.append(done.code)
        print("CODES", codes, "TORCH", "torch" in sys.modules)
        """
    )
    import json

    spec = f"{factory}:build"
    argv = [[spec, *extra] for extra in cases] + [["compare", spec, spec, *extra]
                                                  for extra in cases]
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(argv)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert done.stdout.strip() == f"CODES {[2] * len(argv)} TORCH False", done.stderr
    assert len(done.stderr.strip().splitlines()) == len(argv)
    assert not list(tmp_path.glob("*.marker"))
