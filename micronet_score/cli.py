"""The command line: the only place that prints or exits.

    micronet-score MODEL [options]        score one model (the default command)
    micronet-score compare A B [options]  two models side by side
    micronet-score rules                  the rule sets and baselines

Exit codes: 0 scored (and within --max-score), 1 above --max-score, 2 bad input or usage.
Every option that can be checked without the model (rule set, baseline, shape, bits, JSON, the
output file) is checked before torch is imported or a model loaded, so a typo costs no wait.
torch is imported only inside the commands that need it, and rich only to draw tables and status
lines, so `--help` and `rules` stay instant. The --format choices come from report.FORMATS.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from micronet_score.cli_options import (
    COMMON,
    SETTINGS,
    Common,
    InputDtype,
    Settings,
    with_options,
)
from micronet_score.cli_support import (
    EXIT_OVER_BUDGET,
    check_writable,
    fail,
    guarded,
    input_files,
    parse_json_object,
    refuse_overwriting_inputs,
    run_app,
    torch_quiet,
    write_report,
)
from micronet_score.errors import UserError
from micronet_score.report import FORMATS, compare_formats, score_formats
from micronet_score.views import SORTS

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from micronet_score.results import Report
    from micronet_score.rules import Baseline, RuleSet

    ScoreFormat = str
    CompareFormat = str
    SortOrder = str
else:  # typer offers a Literal's values as the choices
    ScoreFormat = Literal[tuple(score_formats())]
    CompareFormat = Literal[tuple(compare_formats())]
    SortOrder = Literal[SORTS]

Progress = Callable[[str], None]

score_app = typer.Typer(add_completion=False, rich_markup_mode=None)
compare_app = typer.Typer(add_completion=False, rich_markup_mode=None)
rules_app = typer.Typer(add_completion=False, rich_markup_mode=None)


def _format_help(names: Sequence[str]) -> str:
    return "Output format: " + ", ".join(f"{name} ({FORMATS[name].help})" for name in names) + "."


def parse_shape(text: str) -> tuple[int, ...]:
    """`3,32,32` or `3x32x32` (without the batch). Raises UserError when malformed."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise UserError(
            f"malformed --input-shape '{text}': give positive sizes without the batch, e.g. 3,32,32"
        )
    return shape


@dataclass(frozen=True)
class Plan:
    """Settings checked before any model is loaded: the rule set and baseline loaded, the shape
    and the --arch-kwargs parsed, the bit declarations and the output file checked."""

    settings: Settings
    rules: RuleSet
    baseline: Baseline
    input_shape: tuple[int, ...] | None
    arch_kwargs: dict[str, Any]


def plan(settings: Settings, output: Path | None, models: Sequence[str]) -> Plan:
    """Check every option that needs no model, without importing torch. Raises UserError."""
    from micronet_score.bit_declarations import declarations
    from micronet_score.limits import check_input_elements
    from micronet_score.rules import load_baseline, load_rules

    if settings.plugin:  # first: a rule file may choose a formula a plugin registers
        from micronet_score.loading import load_plugins

        load_plugins(settings.plugin)
    rule_set = load_rules(settings.rules)
    baseline = load_baseline(settings.baseline or rule_set.default_baseline)
    shape = parse_shape(settings.input_shape) if settings.input_shape is not None else None
    if shape is not None:
        check_input_elements(shape, settings.max_input_elements)
    declarations(settings.bits, settings.weight_bits, settings.act_bits)
    kwargs = parse_json_object(settings.arch_kwargs, "--arch-kwargs")
    check_writable(output)
    specs = (*models, settings.arch, settings.rules, settings.baseline, *(settings.plugin or ()))
    refuse_overwriting_inputs(output, input_files(specs))
    return Plan(settings, rule_set, baseline, shape, kwargs)


def analyse(spec: str, checked: Plan, progress: Progress = lambda _: None) -> Report:
    """Load the model `spec` points at and score it."""
    progress(f"loading {spec}")
    import torch

    from micronet_score.api import score_model
    from micronet_score.loading import load_model

    settings = checked.settings
    dtype = settings.input_dtype
    loaded = load_model(spec, arch=settings.arch, arch_kwargs=checked.arch_kwargs,
                        trust=settings.trust)
    progress(f"tracing and counting {spec}")
    return score_model(
        loaded.module,
        input_shape=checked.input_shape or loaded.recorded_shape,
        rules=checked.rules,
        baseline=checked.baseline,
        bits=list(settings.bits or ()),
        weight_bits=settings.weight_bits,
        act_bits=settings.act_bits,
        accumulator_bits=settings.accumulator_bits,
        freebie=settings.freebie,
        input_dtype=None if dtype is InputDtype.auto else getattr(torch, dtype.value),
        max_input_elements=settings.max_input_elements,
    )


@contextlib.contextmanager
def _status() -> Iterator[Progress]:
    """A status line on stderr while slow steps run, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield lambda _: None
        return
    from rich.console import Console

    with Console(stderr=True).status("") as status:
        yield lambda message: status.update(f"{message}…")


TABLE_MIN_WIDTH = 64


def _stdout_console() -> Console:
    """Colour and escape codes only on a terminal (and never with NO_COLOR set); rich decides."""
    from rich.console import Console

    class PipeAwareConsole(Console):
        def on_broken_pipe(self) -> None:  # rich would exit with 1, the gate's FAIL
            self.quiet = True
            raise BrokenPipeError

    console = PipeAwareConsole(highlight=False, emoji=False)
    # Below this the tables would have to cut numbers: lines run past a narrower terminal
    # (which wraps them) rather than show `8.…` for 8.21M.
    console.width = max(console.width, TABLE_MIN_WIDTH)
    return console


def _unicode(console: Console) -> bool:
    return console.encoding.lower().replace("-", "").startswith("utf")


def _show(draw: Callable[[int, bool], Sequence[RenderableType]]) -> None:
    """Draw a table on stdout: in colour on a terminal, else as plain text without trailing
    spaces, as wide as the terminal (or COLUMNS, else 80)."""
    from rich.text import Text

    from micronet_score.report import render_plain

    console = _stdout_console()
    parts = draw(console.width, _unicode(console))
    if not console.is_terminal:
        typer.echo(render_plain(parts, console.width), nl=False)
        return
    for part in parts:
        console.print(part, soft_wrap=isinstance(part, Text))


def _emit(common: Common, make: Callable[[int], str]) -> None:
    """Write a report made at the terminal's width to --output, else to stdout."""
    text = guarded(common.debug, lambda: make(_stdout_console().width))
    output = common.output
    if output is None:
        typer.echo(text, nl=False)
        return
    guarded(common.debug, lambda: write_report(output, text))


def _checked(common: Common, settings: Settings, models: Sequence[str]) -> Plan:
    return guarded(common.debug, lambda: plan(settings, common.output, models))


@score_app.command(
    epilog="Other commands: 'micronet-score compare A B' puts two models side by side; "
    "'micronet-score rules' lists the rule sets and baselines.",
)
@with_options
def score(
    model: Annotated[
        str,
        typer.Argument(
            help="A .pt2 file (torch.export), a .pt/.pth file (pickled module or state_dict), "
            "or a factory 'file.py:function' / 'package.module:function'.",
            show_default=False,
        ),
    ],
    settings: Settings = SETTINGS,
    output_format: Annotated[
        ScoreFormat, typer.Option("--format", help=_format_help(score_formats()))
    ] = "table",
    sort: Annotated[
        SortOrder, typer.Option(help="Row order: graph order, or heaviest share of the score "
                                "first. Table and markdown only.")
    ] = "order",
    top: Annotated[
        int | None, typer.Option(min=1, help="Show only the N heaviest rows (totals cover all).")
    ] = None,
    max_score: Annotated[
        float | None, typer.Option(help="Exit with code 1 when the score is above this bar.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit with code 2 if any op is uncounted.")] = False,
    allow_uncounted: Annotated[list[str] | None, typer.Option(
        help="An uncounted op (fnmatch pattern on its name, e.g. cumsum) that --max-score may "
        "pass over; repeatable. Without it, any uncounted node fails the gate.")] = None,
    common: Common = COMMON,
) -> None:
    """Count a model's parameters and operations under the MicroNet rules, and score it."""
    from micronet_score.report import gate, strict_failure, warning_lines
    from micronet_score.views import View

    if max_score is not None and not (math.isfinite(max_score) and max_score >= 0):
        fail(f"--max-score must be a finite number at or above 0, got {max_score}")
    checked = _checked(common, settings, [model])
    with _status() as progress, torch_quiet(common.debug) as notes:
        report = guarded(common.debug, lambda: analyse(model, checked, progress))
    for line in notes:
        typer.echo(line, err=True)
    view = View(common.depth, sort, top, max_score, tuple(allow_uncounted or ()))
    renderer = FORMATS[output_format]
    parts = renderer.score_parts
    if parts is not None and common.output is None:
        _show(lambda width, unicode: parts(report, view, width, unicode))
    else:
        _emit(common, lambda width: renderer.score(report, view, width))
        sys.stdout.flush()  # the report before the lines on stderr, when both go to one place
        for line in warning_lines(report):
            typer.echo(line, err=True)
    sys.stdout.flush()
    if strict and report.uncounted:
        fail(strict_failure(report))
    if max_score is not None:
        passed, verdict = gate(report, max_score, view.allow_uncounted)
        typer.echo(verdict, err=True)
        if not passed:
            raise typer.Exit(EXIT_OVER_BUDGET)


@compare_app.command(
    epilog="Both models are loaded and counted with the same options; rows are matched by layer "
    "name (module path) and sorted by the size of their change in score.",
)
@with_options
def compare(
    model_a: Annotated[str, typer.Argument(metavar="A", help="The first model (as for score).",
                                           show_default=False)],
    model_b: Annotated[str, typer.Argument(metavar="B", help="The second model.",
                                           show_default=False)],
    settings: Settings = SETTINGS,
    output_format: Annotated[
        CompareFormat, typer.Option("--format", help=_format_help(compare_formats()))
    ] = "table",
    top: Annotated[
        int | None, typer.Option(min=1, help="Show only the N largest changes.")
    ] = None,
    common: Common = COMMON,
) -> None:
    """Score two models with the same options and show them side by side."""
    from micronet_score.report import warning_lines
    from micronet_score.views import compare as compare_reports

    checked = _checked(common, settings, [model_a, model_b])

    def analyse_named(spec: str, label: str, progress: Progress) -> Report:
        try:
            return analyse(spec, checked, progress)
        except UserError as error:
            if spec in str(error):
                raise
            raise UserError(f"{label} ({spec}): {error}") from error

    with _status() as progress, torch_quiet(common.debug) as notes:
        before = guarded(common.debug, lambda: analyse_named(model_a, "A", progress))
        after = guarded(common.debug, lambda: analyse_named(model_b, "B", progress))
    for line in notes:
        typer.echo(line, err=True)
    comparison = compare_reports(before, after, (model_a, model_b), common.depth)
    sys.stdout.flush()
    warned_a, warned_b = warning_lines(before), warning_lines(after)
    for line in warned_a:  # a warning both models get is said once
        typer.echo(f"{'A and B' if line in warned_b else 'A'}: {line}", err=True)
    for line in warned_b:
        if line not in warned_a:
            typer.echo(f"B: {line}", err=True)
    renderer = FORMATS[output_format]
    parts, make = renderer.compare_parts, renderer.compare
    assert make is not None  # the choices hold only formats that compare
    if parts is not None and common.output is None:
        _show(lambda width, unicode: parts(comparison, top, width, unicode))
    else:
        _emit(common, lambda width: make(comparison, top, width))


@rules_app.command()
def list_rules() -> None:
    """List the rule sets and baselines available, with their figures and input shapes."""
    from micronet_score.report import rules_listing
    from micronet_score.rules import available_baselines, available_rules, load_baseline, load_rules

    def describe() -> list[str]:
        sets = [load_rules(name) for name in available_rules()]
        return rules_listing(
            [(r.name, r.description, r.default_baseline) for r in sets],
            [load_baseline(name) for name in available_baselines()],
        )

    typer.echo("\n".join(guarded(False, describe)))


def main(argv: list[str] | None = None) -> None:
    """Entry point: `micronet-score rules`, `micronet-score compare A B`, else the score command."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "rules":
        sys.exit(run_app(rules_app, args[1:], "micronet-score rules"))
    elif args and args[0] == "compare":
        sys.exit(run_app(compare_app, args[1:], "micronet-score compare"))
    else:
        sys.exit(run_app(score_app, args, "micronet-score"))
