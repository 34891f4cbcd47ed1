"""``micronet-compress``: the toolkit's stages from the command line; the only place that prints.

    micronet-compress run RECIPE            every stage of a recipe (a YAML file or a bundled name)
    micronet-compress train|distill|prune|quantize --model NAME [--set KEY=VALUE ...]
    micronet-compress recipes               the bundled recipes

A stage command is a one-stage recipe built from its options, so it validates, resumes and
reports exactly as ``run`` does. Rerunning a command with the same output folder resumes it.
Exit codes: 0 done, 2 bad input (one line on stderr; ``--debug`` shows the traceback),
130 interrupted.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from micronet_score import __version__
from micronet_score.cli_support import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    guarded,
    parse_json_object,
    run_app,
)
from micronet_score.errors import UserError

if TYPE_CHECKING:
    from micronet_score.compress.recipe import Candidate, Recipe

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    help="Train, distill, prune and quantize models for the MicroNet score, stage by stage "
    "or from a recipe.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"micronet-compress {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _options(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
) -> None:
    """Options given before the command; the help text is the app's."""


def _guarded_run(debug: bool, action: Callable[[], None]) -> None:
    """The scorer's one-line errors (exit 2, a traceback with --debug); Ctrl-C as 130."""
    try:
        guarded(debug, action)
    except KeyboardInterrupt:
        typer.echo("interrupted: run the same command again to resume", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _execute(recipe: Recipe, out: Path) -> None:
    """Run ``recipe`` with a progress display on stderr, then print the candidates."""
    from rich.console import Console

    from micronet_score.compress.recipe import (
        CANDIDATES_FILE,
        PARETO_FILE,
        SUMMARY_FILE,
        run_recipe,
    )
    from micronet_score.compress.train import RichProgress

    console = Console(stderr=True, highlight=False)
    progress = RichProgress(console)
    # Off a terminal the bar is never started: only the per-epoch lines are printed, and no
    # final render of the bar (a blank line before an error message, or in a log file).
    with progress if console.is_terminal else contextlib.nullcontext():
        candidates = run_recipe(recipe, out, progress=progress,
                                log=lambda line: console.print(line, markup=False,
                                                               soft_wrap=True))
    typer.echo(_table(candidates))
    files = ", ".join(str(out / name) for name in (CANDIDATES_FILE, PARETO_FILE, SUMMARY_FILE))
    typer.echo(f"wrote {files}")


def _table(candidates: Sequence[Candidate]) -> str:
    rows = [("stage", "accuracy", "score", "sparsity", "bits", "file")]
    rows += [(c.stage, f"{c.accuracy:.2%}", f"{c.score:.5g}", f"{c.sparsity:.1%}", c.bits, c.file)
             for c in candidates]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each value read as YAML (``0.5``, ``adam``, ``[dense1, trans3]``)
    by the same hostile-input-safe reader as rule files."""
    from micronet_score.safe_yaml import parse_yaml

    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"malformed --set '{pair}': expected KEY=VALUE, e.g. lr=0.01")
        settings[key.strip()] = parse_yaml(text, f"--set '{pair}'")
    return settings


RecipeArgument = Annotated[
    str,
    typer.Argument(help="A recipe YAML file, or the name of a bundled recipe (see 'recipes').",
                   show_default=False),
]
OutOption = Annotated[
    Path | None,
    typer.Option(help="Run folder; rerunning with the same folder resumes. [default: "
                 "runs/<recipe name>, or runs/<stage> for a stage command]"),
]
DataDirOption = Annotated[
    str | None, typer.Option(help="Folder holding cifar-10-batches-py (CIFAR-10 only).")
]
DownloadOption = Annotated[bool, typer.Option(help="Download CIFAR-10 when it is missing.")]
DeviceOption = Annotated[
    str | None, typer.Option(help="Training device, e.g. cpu or cuda:0 [default: CUDA if any].")
]
DebugOption = Annotated[bool, typer.Option(help="Show tracebacks.")]
ModelOption = Annotated[
    str, typer.Option(help="Registered model name, e.g. densenet121_gr4.", show_default=False)
]
ModelArgsOption = Annotated[
    str | None,
    typer.Option(metavar="JSON", help="Arguments for the model's builder, e.g. "
                 "'{\"growth_rate\": 6, \"groups\": 2}' with --model densenet."),
]
DatasetOption = Annotated[str, typer.Option(help="cifar10 or digits.")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Batch size.")]
WeightsOption = Annotated[
    Path | None,
    typer.Option(help="State_dict to start from, e.g. an earlier stage's model.pt "
                 "[default: the seeded initialisation]."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE",
                 help="A stage setting (the value is read as YAML), repeatable, e.g. "
                 "--set epochs=30 --set lr=0.01; an unknown key is refused with the list of "
                 "valid ones."),
]
SeedOption = Annotated[int, typer.Option(help="Seed of initialisation, data order, augmentation.")]
RulesOption = Annotated[str, typer.Option(help="Rule set the candidates are scored under.")]
BaselineOption = Annotated[
    str | None, typer.Option(help="Baseline to score against [default: the rule set's own].")
]


@app.command()
def run(
    recipe: RecipeArgument,
    out: OutOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    device: DeviceOption = None,
    debug: DebugOption = False,
) -> None:
    """Run every stage of a recipe; write candidates.csv, pareto.png and summary.md."""
    from micronet_score.compress.recipe import load_recipe

    def start() -> None:
        loaded = load_recipe(recipe)
        overrides: dict[str, Any] = {"download": download or loaded.download}
        if data_dir is not None:
            overrides["data_dir"] = data_dir
        if device is not None:
            overrides["device"] = device
        _execute(replace(loaded, **overrides), out or Path("runs") / loaded.name)

    _guarded_run(debug, start)


@app.command()
def recipes() -> None:
    """List the bundled recipes and where their files are."""
    from micronet_score.compress.recipe import RECIPES_DIR, bundled_recipes

    for name in bundled_recipes():
        typer.echo(f"{name:10} {RECIPES_DIR / name}.yaml")


def _stage(
    kind: str,
    *,
    model: str,
    model_args: str | None,
    dataset: str,
    data_dir: str | None,
    download: bool,
    batch_size: int,
    weights: Path | None,
    out: Path | None,
    settings: list[str] | None,
    seed: int,
    device: str | None,
    rules: str,
    baseline: str | None,
    debug: bool,
    teacher: tuple[str, Path, str | None] | None = None,
) -> None:
    """Build the one-stage recipe a stage command describes and run it."""
    from micronet_score.compress.recipe import parse_recipe

    def start() -> None:
        stage = {"stage": kind, **parse_settings(settings or ())}
        if teacher is not None:
            name, teacher_weights, teacher_args = teacher
            stage["teacher"] = {
                "model": name, "weights": str(teacher_weights),
                "model_args": parse_json_object(teacher_args, "--teacher-args"),
            }
        raw = {
            "name": kind, "model": model,
            "model_args": parse_json_object(model_args, "--model-args"),
            "dataset": dataset, "data_dir": data_dir or "data",
            "download": download, "batch_size": batch_size, "seed": seed, "device": device,
            "weights": None if weights is None else str(weights), "rules": rules,
            "baseline": baseline, "stages": [stage],
        }
        recipe = parse_recipe(raw, f"micronet-compress {kind}")
        _execute(recipe, out or Path("runs") / kind)

    _guarded_run(debug, start)


@app.command("train")
def train_command(
    model: ModelOption,
    dataset: DatasetOption = "cifar10",
    model_args: ModelArgsOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    batch_size: BatchSizeOption = 128,
    weights: WeightsOption = None,
    out: OutOption = None,
    settings: SetOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = None,
    rules: RulesOption = "micronet",
    baseline: BaselineOption = None,
    debug: DebugOption = False,
) -> None:
    """Train with cross-entropy. Settings: epochs, lr, optimizer (sgd/adam), momentum,
    weight_decay, label_smoothing, mixup_alpha, cutmix_alpha, compile."""
    _stage("train", model=model, model_args=model_args, dataset=dataset, data_dir=data_dir,
           download=download, batch_size=batch_size, weights=weights, out=out,
           settings=settings, seed=seed, device=device, rules=rules, baseline=baseline,
           debug=debug)


@app.command("distill")
def distill_command(
    model: ModelOption,
    teacher: Annotated[str, typer.Option(help="The teacher's model name.", show_default=False)],
    teacher_weights: Annotated[
        Path, typer.Option(help="The teacher's state_dict.", show_default=False)
    ],
    teacher_args: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="Arguments for the teacher's builder (as --model-args)."),
    ] = None,
    dataset: DatasetOption = "cifar10",
    model_args: ModelArgsOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    batch_size: BatchSizeOption = 128,
    weights: WeightsOption = None,
    out: OutOption = None,
    settings: SetOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = None,
    rules: RulesOption = "micronet",
    baseline: BaselineOption = None,
    debug: DebugOption = False,
) -> None:
    """Train against a teacher with the distillation loss. Settings: those of train, plus
    temperature and alpha (the soft term's weight)."""
    _stage("distill", model=model, model_args=model_args, dataset=dataset, data_dir=data_dir,
           download=download, batch_size=batch_size, weights=weights, out=out,
           settings=settings, seed=seed, device=device, rules=rules, baseline=baseline,
           debug=debug, teacher=(teacher, teacher_weights, teacher_args))


@app.command("prune")
def prune_command(
    model: ModelOption,
    weights: Annotated[
        Path, typer.Option(help="The trained state_dict to prune.", show_default=False)
    ],
    dataset: DatasetOption = "cifar10",
    model_args: ModelArgsOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    batch_size: BatchSizeOption = 128,
    out: OutOption = None,
    settings: SetOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = None,
    rules: RulesOption = "micronet",
    baseline: BaselineOption = None,
    debug: DebugOption = False,
) -> None:
    """Iterative global magnitude pruning with retraining. Settings: target (0.65), step (0.1),
    max_epochs (50), min_accuracy, max_drop (0.01), and the retraining's train settings but
    epochs (lr 0.001)."""
    _stage("prune", model=model, model_args=model_args, dataset=dataset, data_dir=data_dir,
           download=download, batch_size=batch_size, weights=weights, out=out,
           settings=settings, seed=seed, device=device, rules=rules, baseline=baseline,
           debug=debug)


@app.command("quantize")
def quantize_command(
    model: ModelOption,
    weights: Annotated[
        Path, typer.Option(help="The float state_dict to quantize.", show_default=False)
    ],
    dataset: DatasetOption = "cifar10",
    model_args: ModelArgsOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = False,
    batch_size: BatchSizeOption = 128,
    out: OutOption = None,
    settings: SetOption = None,
    seed: SeedOption = 0,
    rules: RulesOption = "micronet",
    baseline: BaselineOption = None,
    debug: DebugOption = False,
) -> None:
    """int8 post-training quantization on the CPU. Settings: method (fx or pt2e), skip (module
    names left float, e.g. [trans3, dense1, dense2]), calibration_batches (10), backend
    (fbgemm or x86, FX only)."""
    _stage("quantize", model=model, model_args=model_args, dataset=dataset, data_dir=data_dir,
           download=download, batch_size=batch_size, weights=weights, out=out,
           settings=settings, seed=seed, device=None, rules=rules, baseline=baseline,
           debug=debug)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    sys.exit(run_app(app, sys.argv[1:] if argv is None else argv, "micronet-compress"))
