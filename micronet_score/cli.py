"""The command line: the only place that prints or exits.

Exit codes: 0 scored (and within --max-score), 1 above --max-score, 2 bad input or usage.
torch is imported only inside the commands that need it, so `--help` and `rules` stay instant.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from micronet_score import __version__
from micronet_score.errors import UserError

if TYPE_CHECKING:
    from micronet_score.report import Report

T = TypeVar("T")
EXIT_OK, EXIT_OVER_BUDGET, EXIT_BAD_INPUT = 0, 1, 2


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


score_app = typer.Typer(add_completion=False, rich_markup_mode=None)
rules_app = typer.Typer(add_completion=False, rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"micronet-score {__version__}")
        raise typer.Exit(EXIT_OK)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _guarded(debug: bool, action: Callable[[], T]) -> T:
    """Run `action`, turning any failure into one line and exit code 2 unless --debug is given."""
    try:
        return action()
    except UserError as error:
        if debug:
            raise
        _fail(str(error))
    except Exception as error:
        if debug:
            raise
        _fail(f"{type(error).__name__}: {error}".splitlines()[0] + " (rerun with --debug)")


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


def _parse_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--arch-kwargs is not valid JSON ({error.msg}): {text}") from error
    if not isinstance(value, dict):
        raise UserError("--arch-kwargs must be a JSON object, e.g. '{\"growth_rate\": 4}'")
    return value


def render(report: Report, output_format: OutputFormat) -> str:
    from micronet_score import report as formats

    renderers = {
        OutputFormat.table: formats.to_text,
        OutputFormat.json: formats.to_json,
        OutputFormat.csv: formats.to_csv,
        OutputFormat.markdown: formats.to_markdown,
    }
    return renderers[output_format](report)


@score_app.command(
    epilog="Other commands: 'micronet-score rules' lists the rule sets and baselines.",
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
    baseline: Annotated[
        str | None,
        typer.Option(help="Baseline name or YAML path [default: the rule set's own]."),
    ] = None,
    rules: Annotated[str, typer.Option(help="Rule set name or YAML path.")] = "micronet",
    input_shape: Annotated[
        str | None,
        typer.Option(help="Input shape without the batch, e.g. 3,32,32 [default: the "
                     "exported shape, else the baseline's]."),
    ] = None,
    bits: Annotated[
        list[str] | None,
        typer.Option(help="Declare widths for modules matching a pattern: PATTERN=W[/A], "
                     "e.g. 'dense3=8/8' (covers dense3.*). Repeatable; the last match wins."),
    ] = None,
    weight_bits: Annotated[int | None, typer.Option(help="Width of every weight.")] = None,
    act_bits: Annotated[int | None, typer.Option(help="Width of every activation.")] = None,
    accumulator_bits: Annotated[
        int | None, typer.Option(help="Width of the adders that accumulate dot products.")
    ] = None,
    freebie: Annotated[
        bool, typer.Option("--freebie/--no-freebie", help="Allow the 16-bit freebie when eligible.")
    ] = True,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Output format.")
    ] = OutputFormat.table,
    output: Annotated[
        Path | None, typer.Option(help="Write the report to this file instead of stdout.")
    ] = None,
    max_score: Annotated[
        float | None, typer.Option(help="Exit with code 1 when the score is above this bar.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit with code 2 if any op is uncounted.")] = False,
    arch: Annotated[
        str | None,
        typer.Option(help="Factory 'file.py:function' or 'pkg.mod:function' that builds the "
                     "model a state_dict belongs to."),
    ] = None,
    arch_kwargs: Annotated[
        str | None, typer.Option(help="JSON keyword arguments for the factory.")
    ] = None,
    trust: Annotated[
        bool,
        typer.Option(help="Load pickled modules with weights_only=False. RISK: unpickling runs "
                     "arbitrary code from the file; use only on files you trust."),
    ] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
) -> None:
    """Count a model's parameters and operations under the MicroNet rules, and score it."""

    def analyse() -> Report:
        from micronet_score.api import score_model
        from micronet_score.loading import load_model

        shape = parse_shape(input_shape) if input_shape else None
        loaded = load_model(model, arch=arch, arch_kwargs=_parse_kwargs(arch_kwargs), trust=trust)
        return score_model(
            loaded.module,
            input_shape=shape or loaded.recorded_shape,
            rules=rules,
            baseline=baseline,
            bits=bits,
            weight_bits=weight_bits,
            act_bits=act_bits,
            accumulator_bits=accumulator_bits,
            freebie=freebie,
        )

    report = _guarded(debug, analyse)
    text = render(report, output_format)
    if output is not None:
        _guarded(debug, lambda: output.write_text(text, encoding="utf-8"))
    else:
        typer.echo(text, nl=False)
    if strict and report.uncounted:
        _fail(f"{len(report.uncounted)} node(s) not counted (--strict); see 'uncounted'")
    if max_score is not None:
        verdict = "PASS" if report.score <= max_score else "FAIL"
        typer.echo(f"{verdict}: score {report.score:.6f} vs --max-score {max_score}", err=True)
        if verdict == "FAIL":
            raise typer.Exit(EXIT_OVER_BUDGET)


@rules_app.command()
def list_rules() -> None:
    """List the rule sets and baselines available, with their figures and input shapes."""
    from micronet_score.rules import available_baselines, available_rules, load_baseline, load_rules

    def describe() -> list[str]:
        lines = ["Rule sets:"]
        for name in available_rules():
            rule_set = load_rules(name)
            default = rule_set.default_baseline
            lines.append(f"  {name:<18} {rule_set.description} (default baseline {default})")
        lines.append("Baselines:")
        for name in available_baselines():
            base = load_baseline(name)
            shape = "x".join(map(str, base.input_shape)) if base.input_shape else "none"
            lines.append(
                f"  {name:<18} {base.model} on {base.dataset}: params {base.params:,.0f}, "
                f"ops {base.ops:,.0f}, input {shape}, bar {base.quality}"
            )
        return lines

    typer.echo("\n".join(_guarded(False, describe)))


def main(argv: list[str] | None = None) -> None:
    """Entry point: `micronet-score rules`, else the score command."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "rules":
        rules_app(args[1:], prog_name="micronet-score rules")
    else:
        score_app(args, prog_name="micronet-score")
