"""Exit codes keep their meaning whatever the model's code does; limits on work from small inputs;
reports written atomically and never over an input.

Every command goes through `run_app`, the console script's own path (typer's CliRunner would skip
the outer guard that turns stray exceptions into exit code 2).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from micronet_score import cli_support, loading
from micronet_score.cli import compare_app, score_app
from micronet_score.cli_support import run_app

FACTORIES = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn


    class Weird(BaseException):
        pass


    def tiny():
        return nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())


    def many():
        return nn.Sequential(*[nn.ReLU() for _ in range(1500)])


    def exits():
        sys.exit(0)


    def raises():
        raise RuntimeError("first line\\nsecond line")


    def raises_base():
        raise Weird("odd")


    class ExitsInForward(nn.Module):
        def forward(self, x):
            sys.exit(0)


    def exits_in_forward():
        return ExitsInForward()


    class NeedsExport(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            if x.shape[-1] > 2:  # shape-dependent: symbolic tracing fails, export works
                return self.conv(x)
            return x


    def needs_export():
        return NeedsExport()
    """
)


@pytest.fixture()
def factories(tmp_path: Path) -> Path:
    source = tmp_path / "factories.py"
    source.write_text(FACTORIES)
    return source


def run(*args: str, app: object = score_app) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one command, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_app(app, list(args), "micronet-score")  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


def assert_one_error_line(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], err


@pytest.mark.parametrize(
    ("function", "fragment"),
    [
        ("exits", "called sys.exit(0)"),
        ("exits_in_forward", "called sys.exit(0)"),
        ("raises", "RuntimeError: first line (rerun with --debug)"),
        ("raises_base", "Weird: odd"),
    ],
)
def test_user_code_that_exits_or_raises_gives_2_even_under_the_gate(
    factories: Path, function: str, fragment: str
) -> None:
    # --max-score 0 fails every real score: exit 0 or 1 here would be a verdict nobody gave.
    code, out, err = run(f"{factories}:{function}", "--input-shape", "3,4,4", "--max-score", "0")
    assert_one_error_line(code, err, fragment)
    assert out == ""


def test_debug_lets_the_exception_through(factories: Path) -> None:
    with pytest.raises(RuntimeError, match="first line"):
        run(f"{factories}:raises", "--debug")


def test_a_factory_file_named_like_an_installed_package_does_not_shadow_it(
    tmp_path: Path,
) -> None:
    # Before: the user's rich.py replaced the rich package that the table is drawn with, and the
    # command ended in a traceback with exit code 1. Run as the console script runs (`python -m`
    # puts the current folder first on the import path, as it does for every tool).
    (tmp_path / "rich.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 2, 1))\n"
    )
    script = shutil.which("micronet-score", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is not installed (pip install -e .)"
    done = subprocess.run(
        [script, "rich.py:build", "--input-shape", "3,4,4", "--max-score", "1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("PASS"), done.stderr
    assert "layer" in done.stdout and "score:" in done.stdout


def test_usage_errors_are_one_line_with_exit_2(factories: Path) -> None:
    for args in (["--bogus"], ["--max-score", "abc"], ["--depth", "0"], ["--format", "xml"]):
        code, _, err = run(f"{factories}:tiny", *args)
        assert_one_error_line(code, err, "see 'micronet-score --help'")
    code, _, err = run("only-one-model", app=compare_app)
    assert_one_error_line(code, err, "Missing argument")


@pytest.mark.parametrize("bar", ["nan", "inf", "-1"])
def test_a_max_score_that_cannot_be_met_honestly_is_refused(factories: Path, bar: str) -> None:
    code, _, err = run(f"{factories}:tiny", "--max-score", bar)
    assert_one_error_line(code, err, "--max-score must be a finite number")


def test_the_gate_exit_codes_are_unchanged(factories: Path) -> None:
    # conv 3->2 1x1 at 3x4x4: 6 params; 6 mults and 4 adds per position of 16; relu 32 ops.
    passed = run(f"{factories}:tiny", "--input-shape", "3,4,4", "--max-score", "1")
    failed = run(f"{factories}:tiny", "--input-shape", "3,4,4", "--max-score", "0")
    assert (passed[0], failed[0]) == (0, 1)
    assert passed[2].startswith("PASS") and failed[2].startswith("FAIL")


def test_input_shape_is_bounded_before_any_allocation(factories: Path) -> None:
    # The export fallback would allocate 2.7e9 floats (10.8 GB) for this input.
    code, _, err = run(f"{factories}:needs_export", "--input-shape", "3,30000,30000")
    assert_one_error_line(code, err, "2,700,000,000 elements, over the limit of 33,554,432")
    assert "--max-input-elements" in err
    code, out, err = run(f"{factories}:needs_export", "--input-shape", "3,4,4",
                         "--max-input-elements", "47", "--format", "json")
    assert_one_error_line(code, err, "48 elements, over the limit of 47")
    code, out, err = run(f"{factories}:needs_export", "--input-shape", "3,4,4",
                         "--max-input-elements", "48", "--format", "json")
    assert code == 0, err
    assert '"trace_method": "torch.export"' in out


def test_a_stream_is_read_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "MAX_STREAM_BYTES", 3 << 20)
    code, _, err = run("/dev/zero")
    assert_one_error_line(code, err, "/dev/zero is not a regular file and gives more than "
                                     "3,145,728 bytes")


def test_a_pipe_with_no_writer_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    code, _, err = run(str(fifo))
    assert_one_error_line(code, err, "gave no bytes")


def test_a_model_from_a_pipe_scores_like_the_file(tmp_path: Path, factories: Path) -> None:
    import torch

    sys.path.insert(0, str(tmp_path))
    try:
        import factories as module  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(module.tiny(), (torch.zeros(1, 3, 4, 4),)), path)
    fifo = tmp_path / "pipe.pt2"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat '{path}' > '{fifo}'"])
    try:
        piped = run(str(fifo), "--format", "json")
    finally:
        writer.wait(timeout=60)
    direct = run(str(path), "--format", "json")
    assert piped[0] == direct[0] == 0, piped[2]
    assert piped[1] == direct[1]


@pytest.mark.parametrize("which", ["model", "arch", "rules"])
def test_output_may_not_replace_an_input(tmp_path: Path, factories: Path, which: str) -> None:
    rules = tmp_path / "my-rules.yaml"
    rules.write_text((Path(loading.__file__).parent / "rules" / "micronet.yaml").read_text())
    weights = tmp_path / "weights.pt"
    import torch

    sys.path.insert(0, str(tmp_path))
    try:
        import factories as module
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(module.tiny().state_dict(), weights)
    targets = {"model": weights, "arch": factories, "rules": rules}
    before = {p: p.read_bytes() for p in targets.values()}
    code, _, err = run(str(weights), "--arch", f"{factories}:tiny", "--rules", str(rules),
                       "--input-shape", "3,4,4", "--format", "json", "--output",
                       str(targets[which]))
    assert_one_error_line(code, err, "is an input of this command")
    assert {p: p.read_bytes() for p in targets.values()} == before


def test_a_failed_write_leaves_the_old_report(
    tmp_path: Path, factories: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report.json"
    report.write_text("old report\n")
    report.chmod(0o640)

    def broken(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli_support.os, "replace", broken)
    code, _, err = run(f"{factories}:tiny", "--format", "json", "--output", str(report))
    assert_one_error_line(code, err, "cannot write")
    assert "No space left on device" in err
    assert report.read_text() == "old report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["factories.py", "report.json"]
    monkeypatch.undo()
    code, _, err = run(f"{factories}:tiny", "--format", "json", "--output", str(report))
    assert code == 0, err
    assert report.read_text().startswith("{")
    assert stat.S_IMODE(report.stat().st_mode) == 0o640  # the old file's permissions are kept


def test_output_to_a_missing_folder_or_a_device(tmp_path: Path, factories: Path) -> None:
    code, _, err = run(f"{factories}:tiny", "--format", "csv", "--output",
                       str(tmp_path / "missing" / "report.csv"))
    assert_one_error_line(code, err, "No such file or directory")
    code, _, err = run(f"{factories}:tiny", "--format", "csv", "--output", os.devnull)
    assert code == 0, err
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # still the device, not a file


@pytest.mark.parametrize("output_format", ["table", "json"])
def test_a_closed_pipe_is_not_a_verdict(
    tmp_path: Path, factories: Path, output_format: str
) -> None:
    # The reader (`true`) has gone before the report is written: exit 1 would read as FAIL.
    done = subprocess.run(
        f"'{sys.executable}' -m micronet_score '{factories}:tiny' --format {output_format} "
        "--max-score 1 | true; echo \"${PIPESTATUS[0]}\"",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )
    assert done.stdout.strip() == "2", done.stderr
    assert done.stderr == ""


def test_no_arguments_shows_the_help_not_an_error() -> None:
    from micronet_score.compress.cli import app as compress_app

    code, _, err = run(app=compress_app)
    assert code == 2
    assert err.startswith("Usage: ") and "error:" not in err
    assert "Commands:" in err


def test_an_error_naming_odd_characters_stays_one_line(tmp_path: Path, factories: Path) -> None:
    # A file name or an option may hold characters that str.splitlines() breaks on.
    code, _, err = run(f"{factories}:tiny", "--bits", "\x1e")
    assert_one_error_line(code, err, "\\x1e")
    odd = tmp_path / "two\nlines\u2028model.pt"
    odd.write_bytes(b"not a model")
    code, _, err = run(str(odd))
    assert_one_error_line(code, err, "two\\nlines\\u2028model.pt")


@pytest.mark.parametrize("raised", ["typer.Exit(0)", "typer.Exit(1)", "typer.Abort()"])
def test_a_factory_cannot_give_a_verdict_through_typer(tmp_path: Path, raised: str) -> None:
    source = tmp_path / "exits_typer.py"
    source.write_text(f"import typer\n\n\ndef build():\n    raise {raised}\n")
    code, out, err = run(f"{source}:build", "--max-score", "1")
    assert_one_error_line(code, err, "code from the model or a factory raised")
    assert out == ""


def test_warnings_from_torch_or_the_model_become_one_note(tmp_path: Path) -> None:
    source = tmp_path / "noisy.py"
    source.write_text(
        "import warnings\nfrom torch import nn\n\n\ndef build():\n"
        "    for i in range(5):\n"
        "        warnings.warn(f'deprecated thing {i}', DeprecationWarning)\n"
        "    return nn.Sequential(nn.Conv2d(3, 2, 1))\n"
    )
    code, _, err = run(f"{source}:build", "--input-shape", "3,4,4", "--format", "json")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == ["note: 5 warning(s) from torch or the model's code hidden "
                     "(DeprecationWarning); rerun with --debug to see them"]
    assert "deprecated thing" not in err
    code, _, err = run(f"{source}:build", "--input-shape", "3,4,4", "--format", "json", "--debug")
    assert "note:" not in err  # --debug hides nothing (pytest itself collects the warnings)


def test_the_gate_never_passes_an_incomplete_count(tmp_path: Path) -> None:
    """A score that leaves out work is no verdict: --max-score 1 fails on a model with an
    uncounted op (its score is 0 here) unless the user accepts that op by name."""
    source = tmp_path / "odd.py"
    source.write_text("import torch\nfrom torch import nn\n\n\nclass Odd(nn.Module):\n"
                      "    def forward(self, x):\n        return torch.special.bessel_j0(x)\n\n\n"
                      "def build():\n    return Odd()\n")
    model = f"{source}:build"
    code, out, err = run(model, "--input-shape", "4", "--max-score", "1")
    assert code == 1
    assert err.splitlines()[-1] == (
        "FAIL: the count is incomplete (1 node not counted: 1 \u00d7 special_bessel_j0 in the "
        "top-level forward), so the score is no verdict; accept them with --allow-uncounted OP "
        "if they cost nothing")
    assert "gate:        FAIL, the count is incomplete (nodes not counted)" in out
    for accepted in ("special_bessel_j0", "special_*", "*"):
        code, _, err = run(model, "--input-shape", "4", "--max-score", "1",
                           "--allow-uncounted", accepted)
        assert code == 0, err
        assert err.splitlines()[-1].startswith("PASS")
    code, _, err = run(model, "--input-shape", "4", "--max-score", "1",
                       "--allow-uncounted", "fft*")
    assert code == 1
    code, out, _ = run(model, "--input-shape", "4", "--format", "json")
    assert code == 0 and '"complete": false' in out
    code, out, _ = run(model, "--input-shape", "4", "--format", "html", "--max-score", "1")
    assert code == 1
    assert '<span class="fail">FAIL</span>: the count is incomplete' in out
