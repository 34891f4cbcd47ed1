"""A recipe's content: the model, the data, the rules it is scored under and its stages, as frozen
dataclasses, read from YAML and checked before any work.

Every key of a recipe and of each stage is checked against the dataclass it fills (its type
hints are the schema), so an unknown key, a value of the wrong type, an unknown model, data set,
rule set or baseline, or a stage that cannot follow the ones before it fails in one line that
names the file and the key, before any training. `micronet_score.compress.runner` runs a recipe.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from torch import nn

from micronet_score.compress.configs import DistillConfig, TrainConfig
from micronet_score.compress.data import DATASETS
from micronet_score.compress.models import create_model
from micronet_score.compress.prune import PruneError, prune_schedule
from micronet_score.compress.quantize import Backend
from micronet_score.errors import UserError
from micronet_score.rules import load_baseline, load_rules
from micronet_score.safe_yaml import read_yaml

RECIPES_DIR = Path(__file__).parent / "recipes"

# The bars drawn on the Pareto plot: the CIFAR-10 quality bar and the score the team aims under.
ACCURACY_BAR = 0.90
SCORE_BAR = 0.02

# Retraining after a pruning step: fine-tuning, so a small rate; epochs come from the stage.
PRUNE_RETRAIN = TrainConfig(epochs=1, lr=0.001)
# The sparsity a prune stage aims at when it gives neither a target nor a number of steps.
DEFAULT_PRUNE_TARGET = 0.65

# Settings every stage shares, so they are given once at the top of a recipe.
_SHARED = ("num_classes", "seed", "device")
_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

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
    """Iterative global magnitude pruning, removing ``step`` of the remaining weights per step:
    exactly ``steps`` steps (ten of 0.1 give 1 - 0.9**10 = 65.13% sparsity), or up to
    ``target`` sparsity with the last step cut short (`prune.prune_schedule`; neither given means
    ``target`` 0.65, both is an error). After each step it retrains with ``retrain``, one
    optimizer and one learning-rate schedule over at most ``max_epochs``, stopping early once the
    accuracy is back to the bar: the larger of ``min_accuracy`` and the accuracy entering the
    stage minus ``max_drop`` (either may be None)."""

    name: str
    target: float | None = None
    step: float = 0.1
    steps: int | None = None
    max_epochs: int = 50
    min_accuracy: float | None = None
    max_drop: float | None = 0.01
    retrain: TrainConfig = field(default_factory=lambda: PRUNE_RETRAIN)

    def __post_init__(self) -> None:
        try:
            self.schedule  # noqa: B018  # refuses a bad step, target or number of steps
        except PruneError as error:
            raise RecipeError(str(error)) from error
        if self.max_epochs < 1:
            raise RecipeError("max_epochs must be at least 1")

    @property
    def target_sparsity(self) -> float | None:
        """The sparsity the schedule aims at; None when the stage gives ``steps``."""
        if self.steps is not None:
            return self.target
        return DEFAULT_PRUNE_TARGET if self.target is None else self.target

    @property
    def schedule(self) -> tuple[float, ...]:
        """The fraction of the remaining weights each step removes."""
        return prune_schedule(self.step, self.target_sparsity, steps=self.steps)


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


def stage_kind(stage: Stage) -> str:
    """The ``stage:`` key that makes ``stage`` (``train``, ``distill``, ``prune``, ``quantize``)."""
    return next(kind for kind, cls in STAGE_KINDS.items() if isinstance(stage, cls))


@dataclass(frozen=True)
class Recipe:
    """A model, its data, how to score it, and the stages. ``model_args`` go to the model's
    builder (e.g. ``growth_rate`` for ``densenet``); ``weights`` is a state_dict to start from
    (else the model starts from its seeded initialisation); ``baseline`` None means the rule
    set's own. ``verify_checksums`` false reads a CIFAR-10 folder that is in the official format
    but not byte-identical to the official release (one's own copy). Paths are relative to the
    current directory."""

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
    verify_checksums: bool = True

    def build_model(self) -> nn.Module:
        """The recipe's model, freshly initialised (from the current torch seed)."""
        return build_model(self.model, self.model_args, self.num_classes)


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
