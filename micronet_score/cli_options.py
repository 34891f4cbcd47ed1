"""The options `score` and `compare` share, defined once.

Each is a field of a frozen dataclass whose annotation carries its `typer.Option`. A command
declares a parameter typed with such a dataclass (`settings: Settings`), and `with_options`
puts the dataclass's fields in its place in the signature typer reads, then hands the command
the values gathered back into one dataclass instance. No printing here: cli.py prints and exits.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from micronet_score import __version__
from micronet_score.cli_support import EXIT_OK
from micronet_score.limits import MAX_INPUT_ELEMENTS


class InputDtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    int64 = "int64"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"micronet-score {__version__}")
        raise typer.Exit(EXIT_OK)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to load and count a model: the options both commands apply to every model."""

    baseline: Annotated[str | None, typer.Option(
        help="Baseline name or YAML path [default: the rule set's own].")] = None
    rules: Annotated[str, typer.Option(help="Rule set name or YAML path.")] = "micronet"
    input_shape: Annotated[str | None, typer.Option(
        help="Input shape without the batch, e.g. 3,32,32 [default: the exported shape, else "
        "the baseline's].")] = None
    input_dtype: Annotated[InputDtype, typer.Option(
        help="Type of the input: auto follows the model's weights (float32 or half); int64 for "
        "token ids (embeddings).")] = InputDtype.auto
    bits: Annotated[list[str] | None, typer.Option(
        help="Declare widths for modules matching a pattern: PATTERN=W[/A], e.g. 'dense3=8/8' "
        "(covers dense3.*). Repeatable; the last match wins.")] = None
    weight_bits: Annotated[int | None, typer.Option(min=1, help="Width of every weight.")] = None
    act_bits: Annotated[int | None, typer.Option(min=1, help="Width of every activation.")] = None
    accumulator_bits: Annotated[int | None, typer.Option(
        min=1, help="Width of the adders that accumulate dot products.")] = None
    freebie: Annotated[bool, typer.Option(
        "--freebie/--no-freebie", help="Allow the 16-bit freebie when eligible.")] = True
    max_input_elements: Annotated[int, typer.Option(
        min=1, help="Refuse an input shape with more elements than this (batch of 1): a "
        "fallback to torch.export allocates the input for real.")] = MAX_INPUT_ELEMENTS
    arch: Annotated[str | None, typer.Option(
        help="Factory 'file.py:function' or 'pkg.mod:function' that builds the model a "
        "state_dict belongs to.")] = None
    arch_kwargs: Annotated[str | None, typer.Option(
        help="JSON keyword arguments for --arch.")] = None
    plugin: Annotated[list[str] | None, typer.Option(
        help="Import FILE.py or package.module before scoring: it registers formulas for ops "
        "of its own with micronet_score.register_op. Runs its code. Repeatable.")] = None
    trust: Annotated[bool, typer.Option(
        help="Load pickled modules with weights_only=False. RISK: unpickling runs arbitrary "
        "code from the file; use only on files you trust.")] = False


@dataclasses.dataclass(frozen=True)
class Common:
    """Where the report goes and how deep its rows are, and the two options every command has."""

    output: Annotated[Path | None, typer.Option(
        help="Write the report to this file instead of stdout.")] = None
    depth: Annotated[int | None, typer.Option(
        min=1, help="Sum the layers by module-path prefix of N parts (1: conv1, dense1, trans1, "
        "...). Not for score's JSON and CSV, which hold every layer.")] = None
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False
    version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version.")] = None


SETTINGS, COMMON = Settings(), Common()  # the defaults, for a command's placeholders
Command = Callable[..., None]


def with_options(command: Command) -> Command:
    """Expand each parameter of `command` typed with an options dataclass (Settings, Common) into
    that dataclass's fields, in place, for typer; the command gets one instance per such
    parameter. Raises TypeError when a field's name clashes with another parameter."""
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)
    groups: dict[str, type[Any]] = {
        name: hint for name, hint in hints.items()
        if name in signature.parameters and isinstance(hint, type)
        and dataclasses.is_dataclass(hint)
    }
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        kind = groups.get(parameter.name)
        if kind is None:
            parameters.append(parameter.replace(annotation=hints[parameter.name]))
            continue
        field_hints = typing.get_type_hints(kind, include_extras=True)
        parameters += [
            inspect.Parameter(spec.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=spec.default, annotation=field_hints[spec.name])
            for spec in dataclasses.fields(kind)
        ]
    names = [p.name for p in parameters]
    if len(names) != len(set(names)):
        raise TypeError(f"{command.__name__}: an option is defined twice in {names}")

    @functools.wraps(command)
    def run(**values: Any) -> None:
        for name, kind in groups.items():
            values[name] = kind(**{spec.name: values.pop(spec.name)
                                   for spec in dataclasses.fields(kind)})
        command(**values)

    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run
