"""Property: whatever the command line, the CLI ends with exit code 0, 1 or 2, prints no
traceback, and an error is one line (`error: ...`, the last line on stderr).

Arguments are drawn from every option with valid, borderline and hostile values (huge and
negative numbers, NaN, text where numbers go, malformed shapes, bit declarations, JSON, paths
that are folders, devices or inputs). Each example runs the console script's path in process.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from micronet_score.cli import compare_app, score_app
from micronet_score.cli_support import run_app

SOURCE = """
from torch import nn

def tiny(width=2):
    return nn.Sequential(nn.Conv2d(3, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))
"""

numbers = st.one_of(
    st.integers(-5, 70), st.integers(-(2**70), 2**70), st.sampled_from(["nan", "inf", "-inf"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=4),
).map(str)
shapes = st.one_of(
    st.lists(st.integers(-3, 40), min_size=0, max_size=5).map(lambda s: ",".join(map(str, s))),
    st.sampled_from(["3,8,8", "3x8x8", "3,8", "8", "3,,8", "3,8,8,", "3,99999999,99999999",
                     "0,8,8", "3,8,8,8,8,8,8,8,8"]),
    st.text(max_size=8),
)
bits = st.one_of(
    st.builds(lambda p, w, a: f"{p}={w}/{a}", st.sampled_from(["*", "0", "1*", "[", "", "x"]),
              numbers, numbers),
    st.builds(lambda p, w: f"{p}={w}", st.sampled_from(["*", "0", "?"]), numbers),
    st.text(max_size=8),
)
json_text = st.one_of(
    st.sampled_from(['{"width": 4}', '{"width": -1}', '{"width": 1e9}', "{", "[]", "null",
                     '{"nope": 1}', '{"width": "x"}', "[" * 2000]),
    st.text(max_size=10),
)


def option_values(folder: Path) -> dict[str, st.SearchStrategy[str]]:
    paths = st.sampled_from([str(folder), str(folder / "missing" / "x"), "/dev/null",
                             str(folder / "report.out"), str(folder / "tiny.py"), "/dev/zero"])
    return {
        "--input-shape": shapes,
        "--input-dtype": st.sampled_from(["auto", "float16", "bfloat16", "int64", "complex", ""]),
        "--bits": bits,
        "--weight-bits": numbers,
        "--act-bits": numbers,
        "--accumulator-bits": numbers,
        "--format": st.sampled_from(["table", "json", "csv", "markdown", "xml"]),
        "--depth": numbers,
        "--top": numbers,
        "--sort": st.sampled_from(["order", "score", "size"]),
        "--max-score": numbers,
        "--rules": st.sampled_from(["micronet", "imt-2022", "imt-2024", "nope", "/dev/zero",
                                    str(folder)]),
        "--baseline": st.sampled_from(["wrn", "resnet18-imt", "nope", str(folder / "tiny.py")]),
        "--arch": st.sampled_from([f"{folder / 'tiny.py'}:tiny", "nope:nope", "::", "os:getcwd"]),
        "--arch-kwargs": json_text,
        "--output": paths,
        "--max-input-elements": numbers,
    }


def valid_values(folder: Path) -> dict[str, st.SearchStrategy[str]]:
    """Values that should score, so that many examples run the whole analysis."""
    return {
        "--input-shape": st.sampled_from(["3,8,8", "3,4,4", "3x16x16"]),
        "--input-dtype": st.sampled_from(["auto", "float32", "float16", "bfloat16"]),
        "--bits": st.sampled_from(["0=8/8", "*=8", "2=4/8", "*=16/16", "5=2"]),
        "--weight-bits": st.integers(1, 32).map(str),
        "--act-bits": st.integers(1, 32).map(str),
        "--accumulator-bits": st.integers(1, 64).map(str),
        "--format": st.sampled_from(["table", "json", "csv", "markdown"]),
        "--depth": st.integers(1, 3).map(str),
        "--top": st.integers(1, 5).map(str),
        "--sort": st.sampled_from(["order", "score"]),
        "--max-score": st.floats(0, 1).map(repr),
        "--rules": st.sampled_from(["micronet", "imt-2022", "imt-2024"]),
        "--baseline": st.sampled_from(["wrn", "resnet18-imt"]),
        "--arch-kwargs": st.sampled_from(['{"width": 4}', '{"width": 1}', "{}"]),
        "--output": st.just(str(folder / "report.out")),
        "--max-input-elements": st.integers(1, 10**8).map(str),
    }


FLAGS = ["--strict", "--no-freebie", "--freebie", "--trust"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("cli-properties")
    (where / "tiny.py").write_text(SOURCE)
    return where


def command_lines(folder: Path, models: int) -> st.SearchStrategy[list[str]]:
    """Mostly valid options with now and then a hostile one, so both paths are exercised."""
    def pairs(table: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
        return st.sampled_from(sorted(table)).flatmap(
            lambda name: table[name].map(lambda value: [name, value])
        )

    valid, hostile = pairs(valid_values(folder)), pairs(option_values(folder))
    tiny = f"{folder / 'tiny.py'}:tiny"
    model = st.one_of(st.just(tiny), st.just(tiny), st.sampled_from(
        [f"{folder / 'tiny.py'}:nope", str(folder), "/dev/null", "nope.pt", "os:getcwd", "-"]
    ))
    flag = st.sampled_from(FLAGS).map(lambda f: [f])
    extra = st.lists(st.one_of(valid, valid, valid, hostile, flag), max_size=5)
    return st.builds(
        lambda ms, rest: [*ms, *(arg for group in rest for arg in group)],
        st.lists(model, min_size=models, max_size=models), extra,
    )


def check(app: object, args: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_app(app, args, "micronet-score")  # type: ignore[arg-type]
    text = err.getvalue()
    event(f"exit code {code}")
    assert code in (0, 1, 2), (args, code, text)
    assert "Traceback" not in text + out.getvalue(), (args, text)
    if code == 2:
        lines = text.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], (args, text)
    if code == 1:
        assert text.strip().splitlines()[-1].startswith("FAIL: "), (args, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_score_command_lines(folder: Path, data: st.DataObject) -> None:
    check(score_app, data.draw(command_lines(folder, 1)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compare_command_lines(folder: Path, data: st.DataObject) -> None:
    args = [a for a in data.draw(command_lines(folder, 2)) if a not in ("--strict", "--sort")]
    check(compare_app, args)

