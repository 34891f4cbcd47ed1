"""Recipes: one model, one data set and a chain of compression stages, written in YAML.

`run_recipe` runs the stages in order, each on the model the previous one left, and writes under
the run folder one folder per stage (its checkpoints, ``model.pt`` as a plain state_dict, the file
the scorer reads, ``result.json``), then ``candidates.csv``, ``pareto.png`` and ``summary.md``
over every stage so far. A stage whose ``result.json`` exists is not run again, and one that was
cut short resumes from its checkpoints, so rerunning a recipe after an interruption, or after
adding stages, redoes only what is missing. A stage folder remembers the settings that made it
and refuses to resume under different ones, so results of two recipes never mix.

Every candidate is scored in-process by `score_model` on the same object that is saved, and the
saved file scores the same with the ``micronet-score`` command recorded next to it.
"""

from __future__ import annotations

import copy
import csv
import json
import re
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import torch
from torch import nn

from micronet_score.api import score_model
from micronet_score.compress.data import DATASETS, Loader, make_loaders
from micronet_score.compress.models import create_model
from micronet_score.compress.prune import (
    PruneResult,
    RetrainStep,
    global_sparsity,
    prune_iteratively,
    prune_schedule,
)
from micronet_score.compress.quantize import (
    Backend,
    calibration_inputs,
    fx_state_dict,
    quantize_fx,
    quantize_pt2e,
    save_pt2e,
)
from micronet_score.compress.train import (
    DistillConfig,
    Labelled,
    Progress,
    TrainConfig,
    distill,
    evaluate,
    resolve_device,
    train,
)
from micronet_score.errors import UserError
from micronet_score.results import Report
from micronet_score.rules import load_baseline, load_rules
from micronet_score.safe_yaml import read_yaml

RECIPES_DIR = Path(__file__).parent / "recipes"
RESULT_FILE = "result.json"
LINEAGE_FILE = "stage.json"
WEIGHTS_FILE = "model.pt"
EXPORT_FILE = "model.pt2"
CANDIDATES_FILE = "candidates.csv"
PARETO_FILE = "pareto.png"
SUMMARY_FILE = "summary.md"
LAYER_SPARSITY_FILE = "layer_sparsity.csv"

# The bars drawn on the Pareto plot: the CIFAR-10 quality bar and the score the team aims under.
ACCURACY_BAR = 0.90
SCORE_BAR = 0.02

MODEL_FACTORY = "micronet_score.compress.models:create_model"
FX_FACTORY = "micronet_score.compress.quantize:fx_quantized_model"

# Retraining after a pruning step: fine-tuning, so a small rate; epochs come from the stage.
PRUNE_RETRAIN = TrainConfig(epochs=1, lr=0.001)

# Settings every stage shares, so they are given once at the top of a recipe.
_SHARED = ("num_classes", "seed", "device")
_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

Log = Callable[[str], None]
ConfigT = TypeVar("ConfigT", bound=TrainConfig)
T = TypeVar("T")


class RecipeError(UserError):
    """A recipe (or a stage command's settings) is malformed, or a run folder does not fit it."""


@dataclass(frozen=True)
class TrainStage:
    """Train with cross-entropy (see `TrainConfig`), from the previous stage's weights if any."""

    name: str
    config: TrainConfig


@dataclass(frozen=True)
class Teacher:
    """The distillation teacher: loaded from ``weights``, or else trained first with ``train``."""

    model: str
    weights: str | None = None
    train: TrainConfig | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DistillStage:
    """Train with the distillation loss against ``teacher`` (see `DistillConfig`)."""

    name: str
    config: DistillConfig
    teacher: Teacher


@dataclass(frozen=True)
class PruneStage:
    """Iterative global magnitude pruning to ``target`` sparsity, removing ``step`` of the
    remaining weights per step and retraining with ``retrain`` (one epoch at a time, at most
    ``max_epochs``) until the accuracy is back to the bar: the larger of ``min_accuracy`` and
    the accuracy entering the stage minus ``max_drop`` (either may be None)."""

    name: str
    target: float = 0.65
    step: float = 0.1
    max_epochs: int = 50
    min_accuracy: float | None = None
    max_drop: float | None = 0.01
    retrain: TrainConfig = field(default_factory=lambda: PRUNE_RETRAIN)

    def __post_init__(self) -> None:
        prune_schedule(self.step, self.target)  # refuses a step or target outside (0, 1)
        if self.max_epochs < 1:
            raise RecipeError("max_epochs must be at least 1")


@dataclass(frozen=True)
class QuantizeStage:
    """int8 post-training quantization, FX graph mode or PT2E, keeping ``skip`` modules float
    and calibrating on ``calibration_batches`` training batches."""

    name: str
    method: Literal["fx", "pt2e"] = "fx"
    skip: tuple[str, ...] = ()
    calibration_batches: int = 10
    backend: Backend = "fbgemm"

    def __post_init__(self) -> None:
        if self.calibration_batches < 1:
            raise RecipeError("calibration_batches must be at least 1")


Stage = TrainStage | DistillStage | PruneStage | QuantizeStage
STAGE_KINDS: dict[str, type[Stage]] = {
    "train": TrainStage,
    "distill": DistillStage,
    "prune": PruneStage,
    "quantize": QuantizeStage,
}


@dataclass(frozen=True)
class Recipe:
    """A model, its data, how to score it, and the stages. ``model_args`` go to the model's
    builder (e.g. ``growth_rate`` for ``densenet``); ``weights`` is a state_dict to start from
    (else the model starts from its seeded initialisation); ``baseline`` None means the rule
    set's own. Paths are relative to the current directory."""

    name: str
    model: str
    stages: tuple[Stage, ...]
    dataset: str = "cifar10"
    data_dir: str = "data"
    download: bool = False
    batch_size: int = 128
    num_workers: int = 0
    num_classes: int = 10
    seed: int = 0
    device: str | None = None
    weights: str | None = None
    rules: str = "micronet"
    baseline: str | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        """The recipe's model, freshly initialised (from the current torch seed)."""
        return build_model(self.model, self.model_args, self.num_classes)


@dataclass(frozen=True)
class Candidate:
    """One model the run produced, as measured and scored. ``file`` is relative to the run
    folder; ``score_args`` are what ``micronet-score`` needs besides it; ``sparsity`` is the
    fraction of zeros among the conv and linear parameters the scorer counts."""

    stage: str
    kind: str
    accuracy: float
    params: float
    ops: float
    score: float
    sparsity: float
    bits: str
    file: str
    score_args: tuple[str, ...]
    seconds: float
    notes: str

    @property
    def command(self) -> str:
        """The scorer command for this candidate, run from the run folder."""
        return " ".join(["micronet-score", self.file, *(_quote(arg) for arg in self.score_args)])


# --- Loading and validating --------------------------------------------------------------------


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``run`` accepts them instead of a path)."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def load_recipe(spec: str | Path) -> Recipe:
    """Read and validate a recipe file, or a bundled recipe by name."""
    path = Path(spec)
    if not path.is_file():
        if str(spec) not in bundled_recipes():
            raise RecipeError(
                f"no recipe file {spec}; give a YAML path or a bundled recipe: "
                f"{', '.join(bundled_recipes())}"
            )
        path = RECIPES_DIR / f"{spec}.yaml"
    try:  # the scorer's hostile-file-safe reader: no aliases, tags, duplicate keys, huge files
        data = read_yaml(path)
    except UserError as error:
        raise RecipeError(str(error)) from error
    # A file name may hold anything; the run folder's name may not (see _check_recipe).
    default = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip("._-") or "run"
    return parse_recipe(data, str(path), default_name=default)


def parse_recipe(data: object, source: str, *, default_name: str = "run") -> Recipe:
    """Validate a recipe given as plain data; ``source`` names it in every error message.

    An unknown key, a value of the wrong type, an unknown model, data set, rule set or baseline,
    and a stage that cannot follow the ones before it each fail here, before any training.
    """
    top = _mapping(data, source)
    hints = _hints(Recipe, exclude=("stages",))
    values = _values({k: v for k, v in top.items() if k != "stages"}, hints, source, "stages")
    if "model" not in values:
        raise RecipeError(f"{source}: missing key 'model'")
    if not isinstance(top.get("stages"), list) or not top["stages"]:
        raise RecipeError(f"{source}: 'stages' must be a non-empty list of stages")
    shared = {key: values.get(key, _default(Recipe, key)) for key in ("num_classes", "seed")}
    stages = tuple(
        _stage(raw, f"{source}: stages[{index}]", shared) for index, raw in enumerate(top["stages"])
    )
    recipe = Recipe(**{"name": default_name, **values, "stages": stages})
    _check_recipe(recipe, source)
    return recipe


def build_model(name: str, model_args: Mapping[str, Any], num_classes: int) -> nn.Module:
    """``create_model`` with a recipe's settings; a bad name or argument is a `RecipeError`."""
    try:
        return create_model(name, num_classes=num_classes, **model_args)
    except ValueError as error:
        raise RecipeError(str(error)) from error
    except TypeError as error:  # an argument the builder does not take
        message = f"model '{name}' cannot be built with {dict(model_args)}: {error}"
        raise RecipeError(message) from error


_MAX_WORKERS = 64  # data-loading processes: more only exhausts the machine's process table


def _check_recipe(recipe: Recipe, source: str) -> None:
    """Everything that can be checked without data: the models are built once to be sure."""
    if not _STAGE_NAME.fullmatch(recipe.name):  # it names the run folder: no '..' or '/'
        raise RecipeError(f"{source}: 'name' must be letters, digits, '_', '.' or '-', "
                          f"starting with a letter or digit (got {recipe.name!r})")
    if not 0 <= recipe.num_workers <= _MAX_WORKERS:
        raise RecipeError(f"{source}: 'num_workers' must be from 0 to {_MAX_WORKERS}, "
                          f"got {recipe.num_workers}")
    if not 0 <= recipe.seed < 2**63:  # what torch.manual_seed takes
        raise RecipeError(f"{source}: 'seed' must be from 0 to 2**63 - 1, got {recipe.seed}")
    if recipe.dataset not in DATASETS:
        raise RecipeError(
            f"{source}: unknown dataset '{recipe.dataset}'; choose one of: {', '.join(DATASETS)}"
        )
    teachers = [stage.teacher for stage in recipe.stages if isinstance(stage, DistillStage)]
    try:
        recipe.build_model()
        for teacher in teachers:
            build_model(teacher.model, teacher.model_args, recipe.num_classes)
        load_rules(recipe.rules)
        if recipe.baseline is not None:
            load_baseline(recipe.baseline)
    except UserError as error:
        raise RecipeError(f"{source}: {error}") from error
    names = [stage.name for stage in recipe.stages]
    for name in names:
        if names.count(name) > 1:
            raise RecipeError(f"{source}: two stages are named '{name}'; give each a 'name'")
    has_weights = recipe.weights is not None
    for index, stage in enumerate(recipe.stages):
        if isinstance(stage, QuantizeStage) and index != len(recipe.stages) - 1:
            raise RecipeError(f"{source}: quantize stage '{stage.name}' must be the last stage")
        if isinstance(stage, PruneStage | QuantizeStage) and index == 0 and not has_weights:
            raise RecipeError(
                f"{source}: stage '{stage.name}' needs a trained model: put a train or distill "
                "stage before it, or set 'weights'"
            )


def _stage(raw: object, where: str, shared: Mapping[str, Any]) -> Stage:
    data = dict(_mapping(raw, where))
    kind = data.pop("stage", None)
    if kind not in STAGE_KINDS:
        raise RecipeError(
            f"{where}: 'stage' must be one of: {', '.join(STAGE_KINDS)} (got {kind!r})"
        )
    name = data.pop("name", kind)
    where = f"{where} ({kind} '{name}')"
    if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name):
        raise RecipeError(f"{where}: 'name' must be letters, digits, '_', '.' or '-'")
    if kind == "train":
        return TrainStage(name, _config(TrainConfig, data, where, shared))
    if kind == "distill":
        teacher = _teacher(data.pop("teacher", None), f"{where}: teacher", shared)
        return DistillStage(name, _config(DistillConfig, data, where, shared), teacher)
    retrain_keys = _hints(TrainConfig, exclude=(*_SHARED, "epochs"))
    own_keys = _hints(STAGE_KINDS[kind], exclude=("name", "retrain"))
    values = _values(data, {**own_keys, **retrain_keys} if kind == "prune" else own_keys, where)
    own = {key: value for key, value in values.items() if key in own_keys}
    if kind == "quantize":
        return _construct(QuantizeStage, where, name, **own)
    retrain = {key: value for key, value in values.items() if key in retrain_keys}
    config = _construct(replace, where, PRUNE_RETRAIN, **shared, **retrain)
    return _construct(PruneStage, where, name, **own, retrain=config)


def _teacher(raw: object, where: str, shared: Mapping[str, Any]) -> Teacher:
    data = dict(_mapping(raw, where))
    train_section = data.pop("train", None)
    values = _values(data, _hints(Teacher, exclude=("train",)), where, "train")
    if "model" not in values:
        raise RecipeError(f"{where}: missing key 'model'")
    config = None
    if train_section is not None:
        config = _config(TrainConfig, dict(_mapping(train_section, where)), f"{where}.train",
                         shared)
    if (values.get("weights") is None) == (config is None):
        raise RecipeError(f"{where}: give exactly one of 'weights' and 'train'")
    return Teacher(**values, train=config)


def _config(
    cls: type[ConfigT], data: Mapping[str, Any], where: str, shared: Mapping[str, Any]
) -> ConfigT:
    values = _values(data, _hints(cls, exclude=_SHARED), where)
    return _construct(cls, where, **shared, **values)


def _construct(build: Callable[..., T], where: str, *args: Any, **kwargs: Any) -> T:
    """Call ``build``, prefixing its own value checks (`UserError`) with where they apply."""
    try:
        return build(*args, **kwargs)
    except UserError as error:
        raise RecipeError(f"{where}: {error}") from error


def _mapping(data: object, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: expected a mapping of keys to values")
    return data


def _hints(cls: type, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Field name -> type of a dataclass, the schema its YAML section is checked against."""
    types_ = get_type_hints(cls)
    return {f.name: types_[f.name] for f in fields(cls) if f.name not in exclude}


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


def _values(
    data: Mapping[str, Any], hints: Mapping[str, Any], where: str, *also: str
) -> dict[str, Any]:
    """``data`` checked against ``hints``; ``also`` are keys the caller reads itself."""
    for key in data:
        if key not in hints:
            valid = ", ".join(sorted([*hints, *also]))
            raise RecipeError(f"{where}: unknown key '{key}'; valid keys: {valid}")
    return {key: _typed(value, hints[key], f"{where}: '{key}'") for key, value in data.items()}


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (bool, int, float, str, Literal, X | None, tuple[str, ...],
    Mapping[str, Any])."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _typed(value, inner, where)
    if origin is Literal:
        if value in args:
            return value
        expected = "one of " + ", ".join(repr(arg) for arg in args)
    elif origin is Mapping:
        if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
            return dict(value)
        expected = "a mapping of argument names to values"
    elif origin is tuple:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        expected = "a list of names"
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        expected = "a number"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif isinstance(value, hint):
        return value
    else:
        expected = f"a {hint.__name__}"
    raise RecipeError(f"{where} must be {expected}, got {value!r}")


# --- Running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """What every stage needs besides its model."""

    recipe: Recipe
    train_loader: Loader
    test_loader: Loader
    input_shape: tuple[int, ...]
    progress: Progress | None
    log: Log

    @property
    def device(self) -> torch.device:
        return resolve_device(self.recipe.device)

    def config(self, cfg: ConfigT) -> ConfigT:
        """``cfg`` on the run's device (the device is not part of a stage's settings)."""
        return replace(cfg, device=self.recipe.device)

    def score_args(self) -> tuple[str, ...]:
        args = ("--rules", self.recipe.rules) if self.recipe.rules != "micronet" else ()
        baseline = () if self.recipe.baseline is None else ("--baseline", self.recipe.baseline)
        return (*args, *baseline)

    def score(self, model: nn.Module | torch.export.ExportedProgram) -> Report:
        return score_model(
            model, input_shape=self.input_shape, rules=self.recipe.rules,
            baseline=self.recipe.baseline,
        )


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    progress: Progress | None = None,
    log: Log | None = None,
) -> tuple[Candidate, ...]:
    """Run ``recipe`` into ``out_dir`` (resuming what is there) and return every candidate.

    ``progress`` sees each training epoch and ``log`` gets one line per stage event; the
    library itself prints nothing. The reports are rewritten after every stage, so a long run
    can be followed, and interrupted, at any point.
    """
    train_loader, test_loader = make_loaders(
        recipe.dataset, recipe.data_dir, recipe.batch_size, download=recipe.download,
        num_workers=recipe.num_workers,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(next(iter(test_loader))[0].shape[1:])
    run = _Run(recipe, train_loader, test_loader, shape, progress, log or (lambda _: None))
    torch.manual_seed(recipe.seed)
    model = recipe.build_model()
    candidates: list[Candidate] = []
    if recipe.weights is not None:
        _load_weights(model, Path(recipe.weights), recipe.model)
        candidates.append(_measure_input(model, run))
    for index, stage in enumerate(recipe.stages):
        folder = out / stage.name
        _claim(folder, _lineage(recipe, index))
        result = folder / RESULT_FILE
        if result.exists():
            candidate = _read_candidate(result)
            if not isinstance(stage, QuantizeStage):
                _load_weights(model, folder / WEIGHTS_FILE, recipe.model)
            run.log(f"{stage.name}: done in an earlier run, accuracy {candidate.accuracy:.2%}")
        else:
            run.log(f"{stage.name}: {_kind(stage)} stage")
            start = time.perf_counter()
            candidate = _run_stage(stage, model, folder, run, candidates)
            candidate = replace(candidate, seconds=round(time.perf_counter() - start, 1))
            _write_json(result, asdict(candidate))
            run.log(
                f"{stage.name}: accuracy {candidate.accuracy:.2%}, score {candidate.score:.5g}, "
                f"{candidate.seconds:.0f} s"
            )
        candidates.append(candidate)
        write_reports(out, recipe, candidates)
    return tuple(candidates)


def _run_stage(
    stage: Stage, model: nn.Module, folder: Path, run: _Run, before: list[Candidate]
) -> Candidate:
    if isinstance(stage, TrainStage):
        train(model, run.train_loader, run.test_loader, run.config(stage.config),
              checkpoint_dir=folder, progress=run.progress)
        return _float_candidate(stage, model, folder, run, "")
    if isinstance(stage, DistillStage):
        teacher, teacher_accuracy = _teacher_model(stage.teacher, folder / "teacher", run)
        distill(model, teacher, run.train_loader, run.test_loader, run.config(stage.config),
                checkpoint_dir=folder, progress=run.progress)
        note = f"teacher {stage.teacher.model} at {teacher_accuracy:.2%}"
        return _float_candidate(stage, model, folder, run, note)
    if isinstance(stage, PruneStage):
        result = _prune(stage, model, folder, run, before[-1].accuracy)
        return _float_candidate(stage, model, folder, run, _prune_note(result))
    return _quantize(stage, model, folder, run)


def _measure_input(model: nn.Module, run: _Run) -> Candidate:
    """The starting weights as a candidate, so stage commands show their before and after."""
    assert run.recipe.weights is not None
    accuracy = evaluate(model, run.test_loader, run.device)
    report = run.score(copy.deepcopy(model).cpu().eval())
    kwargs = {"name": run.recipe.model, "num_classes": run.recipe.num_classes,
              **run.recipe.model_args}
    args = ("--arch", MODEL_FACTORY, "--arch-kwargs", json.dumps(kwargs), *run.score_args())
    file = str(Path(run.recipe.weights).resolve())
    return _candidate("input", "input", accuracy, report, file, args, "the starting weights")


def _kind(stage: Stage) -> str:
    return next(kind for kind, cls in STAGE_KINDS.items() if isinstance(stage, cls))


def _float_candidate(
    stage: Stage, model: nn.Module, folder: Path, run: _Run, notes: str
) -> Candidate:
    """Save a float stage's model (state_dict to chain and resume from, .pt2 to score) and
    measure it."""
    accuracy = evaluate(model, run.test_loader, run.device)
    cpu = copy.deepcopy(model).cpu().eval()
    _save_atomic(cpu.state_dict(), folder / WEIGHTS_FILE)
    program = torch.export.export(cpu, (torch.zeros(1, *run.input_shape),))
    torch.export.save(program, folder / EXPORT_FILE)
    file = f"{folder.name}/{EXPORT_FILE}"
    return _candidate(stage.name, _kind(stage), accuracy, run.score(program), file,
                      run.score_args(), notes)


def _candidate(
    name: str, kind: str, accuracy: float, report: Report, file: str,
    score_args: tuple[str, ...], notes: str,
) -> Candidate:
    weighted = [layer for layer in report.layers if layer.op in ("conv", "linear")]
    total = sum(layer.params for layer in weighted)
    zeros = sum(layer.params * layer.sparsity for layer in weighted)
    widths = sorted({layer.weight_bits for layer in weighted if layer.weight_bits is not None})
    return Candidate(
        stage=name, kind=kind, accuracy=accuracy, params=report.params, ops=report.ops,
        score=report.score, sparsity=zeros / total if total else 0.0,
        bits="+".join(str(width) for width in widths), file=file, score_args=score_args,
        seconds=0.0, notes=notes,
    )


def _teacher_model(teacher: Teacher, folder: Path, run: _Run) -> tuple[nn.Module, float]:
    """The teacher, loaded or trained (resumably, in ``folder``), and its test accuracy."""
    torch.manual_seed(run.recipe.seed)
    model = build_model(teacher.model, teacher.model_args, run.recipe.num_classes)
    saved = folder / WEIGHTS_FILE
    if teacher.weights is not None or saved.exists():
        _load_weights(model, Path(teacher.weights) if teacher.weights else saved, teacher.model)
    else:
        assert teacher.train is not None
        run.log(f"training the teacher {teacher.model}")
        train(model, run.train_loader, run.test_loader, run.config(teacher.train),
              checkpoint_dir=folder, progress=run.progress)
        _save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, saved)
    accuracy = evaluate(model, run.test_loader, run.device)
    run.log(f"teacher {teacher.model}: accuracy {accuracy:.2%}")
    return model, accuracy


def _prune(
    stage: PruneStage, model: nn.Module, folder: Path, run: _Run, entry_accuracy: float
) -> PruneResult:
    bars = [stage.min_accuracy or 0.0]
    if stage.max_drop is not None:
        bars.append(entry_accuracy - stage.max_drop)
    config = run.config(stage.retrain)

    def retrain(
        model: nn.Module, max_epochs: int, min_accuracy: float, step: RetrainStep
    ) -> float:
        # The data order follows the sparsity reached, so a resumed stage retrains exactly
        # as an uninterrupted one would.
        offset = round(global_sparsity(model) * 1e4) * max_epochs
        accuracy = 0.0
        for epoch in range(max_epochs):
            epoch_config = replace(config, epochs=1, seed=config.seed + offset + epoch)
            # One epoch per call: the progress lines count the epochs and name the step.
            progress = (None if run.progress is None
                        else Labelled(run.progress, step.label, epoch + 1, max_epochs))
            accuracy = train(model, run.train_loader, run.test_loader, epoch_config,
                             progress=progress).test_acc
            if accuracy >= min_accuracy:
                break
        return accuracy

    result = prune_iteratively(
        model, retrain, step=stage.step, target=stage.target, max_epochs=stage.max_epochs,
        min_accuracy=max(bars), checkpoint_dir=folder,
    )
    _write_layer_sparsity(folder / LAYER_SPARSITY_FILE, result)
    run.log(f"{stage.name}: {_prune_note(result)}")
    return result


def _write_layer_sparsity(path: Path, result: PruneResult) -> None:
    """Each conv and linear layer's fraction of zeros after every step tried, one column per
    step, so one can see where global pruning took its weights from."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        header = [
            f"step {i} ({step.sparsity:.1%}{'' if step.accepted else ', undone'})"
            for i, step in enumerate(result.steps, 1)
        ]
        writer.writerow(["layer", *header])
        for layer in result.steps[0].layers if result.steps else ():
            writer.writerow([layer, *(f"{step.layers[layer]:.4f}" for step in result.steps)])


def _prune_note(result: PruneResult) -> str:
    steps = "; ".join(
        f"{step.sparsity:.1%} at {step.accuracy:.2%}{'' if step.accepted else ' (undone)'}"
        for step in result.steps
    )
    reached = "" if result.reached_target else ", stopped before the target"
    return f"{len(result.steps)} steps: {steps}{reached}"


def _quantize(stage: QuantizeStage, model: nn.Module, folder: Path, run: _Run) -> Candidate:
    torch.manual_seed(run.recipe.seed)
    batches = calibration_inputs(run.train_loader, stage.calibration_batches)
    folder.mkdir(parents=True, exist_ok=True)
    scorable: nn.Module | torch.export.ExportedProgram
    args: tuple[str, ...] = ()
    if stage.method == "fx":
        runnable = scorable = quantize_fx(model, batches, skip=stage.skip, backend=stage.backend)
        _save_atomic(fx_state_dict(runnable), folder / WEIGHTS_FILE)
        kwargs = {"model": run.recipe.model, "skip": list(stage.skip),
                  "num_classes": run.recipe.num_classes, "backend": stage.backend,
                  "input_shape": list(run.input_shape)}
        if run.recipe.model_args:
            kwargs["model_args"] = dict(run.recipe.model_args)
        file, args = WEIGHTS_FILE, ("--arch", FX_FACTORY, "--arch-kwargs", json.dumps(kwargs))
        method = f"FX, {stage.backend}"
    else:
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        scorable = quantize_pt2e(model, batches, skip=stage.skip)
        save_pt2e(scorable, folder / EXPORT_FILE)
        runnable = scorable.module()
        allow_exported_model_train_eval(runnable)  # evaluate switches to eval mode and back
        file, method = EXPORT_FILE, "PT2E"
    with warnings.catch_warnings():
        # torch warns at every quantized cat whose inputs differ in scale, which in a DenseNet
        # is every one; the op requantizes them, and the measured accuracy is what counts.
        warnings.filterwarnings("ignore", message="All inputs of this cat operator")
        accuracy = evaluate(runnable, run.test_loader, "cpu")
        report = run.score(scorable)
    skipped = f"float: {', '.join(stage.skip)}" if stage.skip else "no module left float"
    return _candidate(stage.name, _kind(stage), accuracy, report, f"{folder.name}/{file}",
                      (*args, *run.score_args()), f"int8 ({method}); {skipped}")


# --- Files -------------------------------------------------------------------------------------


def _lineage(recipe: Recipe, index: int) -> dict[str, Any]:
    """The settings that determine stage ``index``'s result: the model, data, seed, starting
    weights and every stage up to it (not where the data lives or which device runs it)."""
    core = {key: getattr(recipe, key) for key in
            ("model", "model_args", "dataset", "batch_size", "num_classes", "seed", "weights")}
    stages = [{"stage": _kind(s), **asdict(s)} for s in recipe.stages[: index + 1]]
    for stage in stages:
        _drop_devices(stage)
    result: dict[str, Any] = json.loads(json.dumps({**core, "stages": stages}))
    return result


def _drop_devices(settings: dict[str, Any]) -> None:
    settings.pop("device", None)
    for value in settings.values():
        if isinstance(value, dict):
            _drop_devices(value)


def _claim(folder: Path, lineage: dict[str, Any]) -> None:
    """Mark ``folder`` as the stage's, or refuse it if other settings made what is in it."""
    path = folder / LINEAGE_FILE
    if path.exists():
        if json.loads(path.read_text(encoding="utf-8")) != lineage:
            raise RecipeError(
                f"{folder} holds a stage made with other settings; delete it or choose "
                "another output folder"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(path, lineage)


def _load_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load a state_dict, or a training checkpoint's, into ``model``; one-line errors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise RecipeError(f"weights file not found: {path}") from error
    except Exception as error:
        raise RecipeError(f"cannot read weights {path}: {error}".splitlines()[0]) from error
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as error:
        raise RecipeError(
            f"{path} does not hold weights of {name}: {str(error).splitlines()[0]}"
        ) from error


def _save_atomic(state: Mapping[str, Any], path: Path) -> None:
    partial = path.with_suffix(".partial")
    torch.save(dict(state), partial)
    partial.replace(path)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _read_candidate(path: Path) -> Candidate:
    data = json.loads(path.read_text(encoding="utf-8"))
    return Candidate(**{**data, "score_args": tuple(data["score_args"])})


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(char in arg for char in " \"{}[]") else arg


CSV_COLUMNS = ("stage", "kind", "accuracy", "params", "ops", "score", "sparsity", "bits",
               "seconds", "command")


def write_reports(out: Path, recipe: Recipe, candidates: Sequence[Candidate]) -> None:
    """``candidates.csv``, ``pareto.png`` and ``summary.md`` for the candidates so far."""
    with open(out / CANDIDATES_FILE, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for c in candidates:
            writer.writerow([c.stage, c.kind, f"{c.accuracy:.4f}", f"{c.params:.1f}",
                             f"{c.ops:.1f}", f"{c.score:.6g}", f"{c.sparsity:.4f}", c.bits,
                             f"{c.seconds:.1f}", c.command])
    from micronet_score.compress.plot import plot_pareto  # matplotlib only when plotting

    plot_pareto(candidates, out / PARETO_FILE, title=f"{recipe.name}: {recipe.model}",
                accuracy_bar=ACCURACY_BAR, score_bar=SCORE_BAR)
    (out / SUMMARY_FILE).write_text(summary(recipe, candidates), encoding="utf-8")


def summary(recipe: Recipe, candidates: Sequence[Candidate]) -> str:
    """The run in Markdown: the candidates, the best one over the bar, notes, scorer commands."""
    baseline = recipe.baseline or load_rules(recipe.rules).default_baseline
    lines = [
        f"# {recipe.name}: {recipe.model} on {recipe.dataset}",
        "",
        f"Scored under the `{recipe.rules}` rules against the `{baseline}` baseline "
        "(lower is better).",
        "",
        "| stage | kind | accuracy | score | params | ops | sparsity | bits | time |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    lines += [
        f"| {c.stage} | {c.kind} | {c.accuracy:.2%} | {c.score:.5g} | {c.params:,.0f} | "
        f"{c.ops:,.0f} | {c.sparsity:.1%} | {c.bits} | {c.seconds:.0f} s |"
        for c in candidates
    ]
    passing = [c for c in candidates if c.accuracy >= ACCURACY_BAR]
    best = min(passing, key=lambda c: c.score, default=None)
    lines += ["", f"Lowest score at {ACCURACY_BAR:.0%} accuracy or more: " + (
        f"**{best.stage}**, {best.score:.5g} at {best.accuracy:.2%}." if best else "none.")]
    notes = [f"- {c.stage}: {c.notes}" for c in candidates if c.notes]
    if notes:
        lines += ["", "## Notes", "", *notes]
    lines += ["", "## Scoring the saved models", "", "From this folder:", "", "```bash",
              *(c.command for c in candidates), "```", ""]
    return "\n".join(lines)
