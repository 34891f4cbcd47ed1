"""The command line: the only place that prints or exits.

    micronet-score MODEL [options]        score one model (the default command)
    micronet-score compare A B [options]  two models side by side
    micronet-score rules                  the rule sets and baselines

Exit codes: 0 scored (and within --max-score), 1 above --max-score, 2 bad input or usage.
torch is imported only inside the commands that need it, and rich only to draw tables and status
lines, so `--help` and `rules` stay instant.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from micronet_score import __version__
from micronet_score.cli_support import (
    EXIT_OK,
    EXIT_OVER_BUDGET,
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
from micronet_score.limits import MAX_INPUT_ELEMENTS

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from micronet_score.report import Report, View

Progress = Callable[[str], None]


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class CompareFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


class SortOrder(str, Enum):
    order = "order"
    score = "score"


score_app = typer.Typer(add_completion=False, rich_markup_mode=None)
compare_app = typer.Typer(add_completion=False, rich_markup_mode=None)
rules_app = typer.Typer(add_completion=False, rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"micronet-score {__version__}")
        raise typer.Exit(EXIT_OK)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise UserError(
            f"malformed --input-shape '{text}': give positive sizes without the batch, e.g. 3,32,32"
        )
    return shape


class InputDtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    int64 = "int64"


@dataclass(frozen=True)
class Settings:
    """How to load and count a model: the options `score` and `compare` share."""

    rules: str = "micronet"
    baseline: str | None = None
    input_shape: str | None = None
    bits: tuple[str, ...] = ()
    weight_bits: int | None = None
    act_bits: int | None = None
    accumulator_bits: int | None = None
    freebie: bool = True
    arch: str | None = None
    arch_kwargs: str | None = None
    trust: bool = False
    input_dtype: InputDtype = InputDtype.auto
    max_input_elements: int = MAX_INPUT_ELEMENTS


def analyse(spec: str, settings: Settings, progress: Progress = lambda _: None) -> Report:
    """Load the model `spec` points at and score it."""
    progress(f"loading {spec}")
    import torch

    from micronet_score.api import score_model
    from micronet_score.loading import load_model

    dtype = settings.input_dtype
    shape = parse_shape(settings.input_shape) if settings.input_shape else None
    kwargs = parse_json_object(settings.arch_kwargs, "--arch-kwargs")
    loaded = load_model(spec, arch=settings.arch, arch_kwargs=kwargs, trust=settings.trust)
    progress(f"tracing and counting {spec}")
    return score_model(
        loaded.module,
        input_shape=shape or loaded.recorded_shape,
        rules=settings.rules,
        baseline=settings.baseline,
        bits=list(settings.bits),
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


def _stdout_console() -> Console:
    """Colour and escape codes only on a terminal (and never with NO_COLOR set); rich decides."""
    from rich.console import Console

    class PipeAwareConsole(Console):
        def on_broken_pipe(self) -> None:  # rich would exit with 1, the gate's FAIL
            self.quiet = True
            raise BrokenPipeError

    return PipeAwareConsole(highlight=False, emoji=False)


def _print(console: Console, parts: list[RenderableType]) -> None:
    from rich.text import Text

    for part in parts:
        console.print(part, soft_wrap=isinstance(part, Text))


def _unicode(console: Console) -> bool:
    return console.encoding.lower().replace("-", "").startswith("utf")


def render(report: Report, output_format: OutputFormat, view: View | None = None,
           width: int = 100) -> str:
    """The report as text in one of the formats (the table in plain text, `width` wide)."""
    from micronet_score import report as formats

    view = view or formats.View()
    if output_format is OutputFormat.table:
        return formats.to_text(report, view, width)
    if output_format is OutputFormat.markdown:
        return formats.to_markdown(report, view)
    if output_format is OutputFormat.csv:
        return formats.to_csv(report)
    return formats.to_json(report)


def _write(debug: bool, output: Path, text: str) -> None:
    guarded(debug, lambda: write_report(output, text))


def _echo_notes(notes: list[str]) -> None:
    for line in notes:
        typer.echo(line, err=True)


def _check_output(debug: bool, output: Path | None, settings: Settings, *models: str) -> None:
    """Before any work: the report must not replace a file the command reads."""
    specs = (*models, settings.arch, settings.rules, settings.baseline)
    guarded(debug, lambda: refuse_overwriting_inputs(output, input_files(specs)))


# Options shared by `score` and `compare`.
BaselineOption = Annotated[
    str | None, typer.Option(help="Baseline name or YAML path [default: the rule set's own].")
]
RulesOption = Annotated[str, typer.Option(help="Rule set name or YAML path.")]


InputDtypeOption = Annotated[
    InputDtype,
    typer.Option(help="Type of the input: auto follows the model's weights (float32 or half); "
                 "int64 for token ids (embeddings)."),
]
ShapeOption = Annotated[
    str | None,
    typer.Option(help="Input shape without the batch, e.g. 3,32,32 [default: the exported "
                 "shape, else the baseline's]."),
]
BitsOption = Annotated[
    list[str] | None,
    typer.Option(help="Declare widths for modules matching a pattern: PATTERN=W[/A], e.g. "
                 "'dense3=8/8' (covers dense3.*). Repeatable; the last match wins."),
]
WeightBitsOption = Annotated[int | None, typer.Option(min=1, help="Width of every weight.")]
ActBitsOption = Annotated[int | None, typer.Option(min=1, help="Width of every activation.")]
AccumulatorOption = Annotated[
    int | None, typer.Option(min=1, help="Width of the adders that accumulate dot products.")
]
FreebieOption = Annotated[
    bool, typer.Option("--freebie/--no-freebie", help="Allow the 16-bit freebie when eligible.")
]
OutputOption = Annotated[
    Path | None, typer.Option(help="Write the report to this file instead of stdout.")
]
DepthOption = Annotated[
    int | None,
    typer.Option(min=1, help="Sum the layers by module-path prefix of N parts (1: conv1, dense1, "
                 "trans1, ...). Table and markdown only."),
]
MaxElementsOption = Annotated[
    int,
    typer.Option(min=1, help="Refuse an input shape with more elements than this (batch of 1): "
                 "a fallback to torch.export allocates the input for real."),
]
TopOption = Annotated[
    int | None, typer.Option(min=1, help="Show only the N heaviest rows (totals cover all).")
]
ArchOption = Annotated[
    str | None,
    typer.Option(help="Factory 'file.py:function' or 'pkg.mod:function' that builds the model a "
                 "state_dict belongs to."),
]
ArchKwargsOption = Annotated[str | None, typer.Option(help="JSON keyword arguments for --arch.")]
TrustOption = Annotated[
    bool,
    typer.Option(help="Load pickled modules with weights_only=False. RISK: unpickling runs "
                 "arbitrary code from the file; use only on files you trust."),
]
DebugOption = Annotated[bool, typer.Option(help="Show tracebacks.")]
VersionOption = Annotated[
    bool | None,
    typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
]


@score_app.command(
    epilog="Other commands: 'micronet-score compare A B' puts two models side by side; "
    "'micronet-score rules' lists the rule sets and baselines.",
)
def score(
    model: Annotated[
        str,
        typer.Argument(
            help="A .pt2 file (torch.export), a .pt/.pth file (pickled module or state_dict), "
            "or a factory 'file.py:function' / 'package.module:function'.",
            show_default=False,
        ),
    ],
    baseline: BaselineOption = None,
    rules: RulesOption = "micronet",
    input_shape: ShapeOption = None,
    input_dtype: InputDtypeOption = InputDtype.auto,
    bits: BitsOption = None,
    weight_bits: WeightBitsOption = None,
    act_bits: ActBitsOption = None,
    accumulator_bits: AccumulatorOption = None,
    freebie: FreebieOption = True,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Output format.")
    ] = OutputFormat.table,
    output: OutputOption = None,
    depth: DepthOption = None,
    sort: Annotated[
        SortOrder, typer.Option(help="Row order: graph order, or heaviest share of the score "
                                "first. Table and markdown only.")
    ] = SortOrder.order,
    top: TopOption = None,
    max_score: Annotated[
        float | None, typer.Option(help="Exit with code 1 when the score is above this bar.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit with code 2 if any op is uncounted.")] = False,
    max_input_elements: MaxElementsOption = MAX_INPUT_ELEMENTS,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    trust: TrustOption = False,
    debug: DebugOption = False,
    version: VersionOption = None,
) -> None:
    """Count a model's parameters and operations under the MicroNet rules, and score it."""
    from micronet_score import report as formats

    settings = Settings(rules, baseline, input_shape, tuple(bits or ()), weight_bits, act_bits,
                        accumulator_bits, freebie, arch, arch_kwargs, trust, input_dtype,
                        max_input_elements)
    if max_score is not None and not (math.isfinite(max_score) and max_score >= 0):
        fail(f"--max-score must be a finite number at or above 0, got {max_score}")
    _check_output(debug, output, settings, model)
    with _status() as progress, torch_quiet(debug) as notes:
        report = guarded(debug, lambda: analyse(model, settings, progress))
    _echo_notes(notes)
    view = formats.View(depth, sort.value, top, max_score)
    if output_format is OutputFormat.table and output is None:
        console = _stdout_console()
        _print(console, formats.table_parts(report, view, console.width, _unicode(console)))
    else:
        width = _stdout_console().width if output_format is OutputFormat.table else 100
        text = render(report, output_format, view, width)
        if output is not None:
            _write(debug, output, text)
        else:
            typer.echo(text, nl=False)
        sys.stdout.flush()  # the report before the lines on stderr, when both go to one place
        for line in formats.warning_lines(report):
            typer.echo(line, err=True)
    sys.stdout.flush()
    if strict and report.uncounted:
        fail(formats.strict_failure(report))
    if max_score is not None:
        passed, verdict = formats.gate(report.score, max_score)
        typer.echo(verdict, err=True)
        if not passed:
            raise typer.Exit(EXIT_OVER_BUDGET)


@compare_app.command(
    epilog="Both models are loaded and counted with the same options; rows are matched by layer "
    "name (module path) and sorted by the size of their change in score.",
)
def compare(
    model_a: Annotated[str, typer.Argument(metavar="A", help="The first model (as for score).",
                                           show_default=False)],
    model_b: Annotated[str, typer.Argument(metavar="B", help="The second model.",
                                           show_default=False)],
    baseline: BaselineOption = None,
    rules: RulesOption = "micronet",
    input_shape: ShapeOption = None,
    input_dtype: InputDtypeOption = InputDtype.auto,
    bits: BitsOption = None,
    weight_bits: WeightBitsOption = None,
    act_bits: ActBitsOption = None,
    accumulator_bits: AccumulatorOption = None,
    freebie: FreebieOption = True,
    output_format: Annotated[
        CompareFormat, typer.Option("--format", help="Output format.")
    ] = CompareFormat.table,
    output: OutputOption = None,
    depth: DepthOption = None,
    top: Annotated[
        int | None, typer.Option(min=1, help="Show only the N largest changes.")
    ] = None,
    max_input_elements: MaxElementsOption = MAX_INPUT_ELEMENTS,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    trust: TrustOption = False,
    debug: DebugOption = False,
    version: VersionOption = None,
) -> None:
    """Score two models with the same options and show them side by side."""
    from micronet_score import report as formats

    settings = Settings(rules, baseline, input_shape, tuple(bits or ()), weight_bits, act_bits,
                        accumulator_bits, freebie, arch, arch_kwargs, trust, input_dtype,
                        max_input_elements)

    def analyse_named(spec: str, label: str, progress: Progress) -> Report:
        try:
            return analyse(spec, settings, progress)
        except UserError as error:
            if spec in str(error):
                raise
            raise UserError(f"{label} ({spec}): {error}") from error

    _check_output(debug, output, settings, model_a, model_b)
    with _status() as progress, torch_quiet(debug) as notes:
        before = guarded(debug, lambda: analyse_named(model_a, "A", progress))
        after = guarded(debug, lambda: analyse_named(model_b, "B", progress))
    _echo_notes(notes)
    comparison = formats.compare(before, after, (model_a, model_b), depth)
    sys.stdout.flush()
    for label, report in (("A", before), ("B", after)):
        for line in formats.warning_lines(report):
            typer.echo(f"{label}: {line}", err=True)
    if output_format is CompareFormat.table:
        console = _stdout_console()
        width = console.width
        parts = formats.compare_parts(comparison, top, width, _unicode(console))
        if output is None:
            _print(console, parts)
            return
        text = formats.render_plain(parts, width)
    elif output_format is CompareFormat.markdown:
        text = formats.compare_markdown(comparison, top)
    else:
        text = formats.compare_json(comparison)
    if output is not None:
        _write(debug, output, text)
    else:
        typer.echo(text, nl=False)


@rules_app.command()
def list_rules() -> None:
    """List the rule sets and baselines available, with their figures and input shapes."""
    from micronet_score.rules import available_baselines, available_rules, load_baseline, load_rules

    def describe() -> list[str]:
        from micronet_score.report import rules_listing

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
