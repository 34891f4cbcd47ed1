"""Rule sets and baselines, loaded from YAML and validated so that a typo fails loudly at load time.

The YAML files under `rules/` are the single source of the constants and choices of each scoring
convention; the code only knows how to apply them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from micronet_score.errors import UserError
from micronet_score.opkinds import ACTIVATIONS, FORMULA_VARIANTS, OpKind

STORAGE_FORMATS = ("dense", "sparse", "kernel_mask", "filter_mask")
ADD_WIDTHS = ("activation", "accumulator")
PARAMS_SCALES = ("none", "density")
OPS_SCALES = ("none", "filter_density")
BASELINES_FILE = "baselines.yaml"


@dataclass(frozen=True)
class ElementCost:
    """Operations per output element of an element-wise function."""

    mults: float
    adds: float


@dataclass(frozen=True)
class FreebiePolicy:
    enabled: bool
    bits: int


@dataclass(frozen=True)
class BatchNormPolicy:
    fold: bool
    mults_per_element: float
    adds_per_element: float
    params_per_channel: int


@dataclass(frozen=True)
class SparsityPolicy:
    """How zeros enter the score: per output channel and per tensor (official rules), or as
    whole-model factors measured over conv and linear weights (the course's rules)."""

    skip_zero_weights: bool
    storage: tuple[str, ...]
    params_scale: str
    ops_scale: str


@dataclass(frozen=True)
class CountedPolicy:
    """Which nodes a rule set sees. `kinds` None means every kind; `modules_only` ignores ops
    written as functions (a module-hook counter cannot see them)."""

    kinds: frozenset[OpKind] | None
    modules_only: bool


@dataclass(frozen=True)
class RuleSet:
    name: str
    description: str
    default_baseline: str
    accumulator_bits: int
    default_bits: int
    add_width: str
    counted: CountedPolicy
    formulas: Mapping[OpKind, str]
    freebie: FreebiePolicy
    batch_norm: BatchNormPolicy
    sparsity: SparsityPolicy
    activations: Mapping[OpKind, ElementCost]
    source: str


@dataclass(frozen=True)
class Baseline:
    name: str
    model: str
    dataset: str
    params: float
    ops: float
    input_shape: tuple[int, ...] | None
    quality: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "dataset": self.dataset,
            "params": self.params,
            "ops": self.ops,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "quality": self.quality,
        }


def rules_dir() -> Path:
    """The folder of bundled rule files (inside the installed package, or the source tree)."""
    return Path(str(resources.files("micronet_score") / "rules"))


def available_rules() -> list[str]:
    return sorted(p.stem for p in rules_dir().glob("*.yaml") if p.name != BASELINES_FILE)


def available_baselines() -> list[str]:
    return list(_read_yaml(rules_dir() / BASELINES_FILE))


def load_rules(name_or_path: str) -> RuleSet:
    """Load a bundled rule set by name, or a rule file by path."""
    path = _resolve(name_or_path, available_rules(), "rule set", "--rules")
    data = _read_yaml(path)
    where = str(path)
    _check_keys(data, _field_names(RuleSet) - {"source"}, where, "")
    freebie = _section(data, "freebie", FreebiePolicy, where)
    batch_norm = _section(data, "batch_norm", BatchNormPolicy, where)
    sparsity_data = _section(data, "sparsity", SparsityPolicy, where)
    storage = tuple(str(s) for s in sparsity_data["storage"])
    for fmt in storage:
        _choice(fmt, STORAGE_FORMATS, where, "sparsity.storage")
    if "dense" not in storage:
        raise UserError(f"{where}: sparsity.storage must include 'dense'")
    return RuleSet(
        name=str(data["name"]),
        description=str(data["description"]),
        default_baseline=str(data["default_baseline"]),
        accumulator_bits=_positive_int(data["accumulator_bits"], where, "accumulator_bits"),
        default_bits=_positive_int(data["default_bits"], where, "default_bits"),
        add_width=_choice(data["add_width"], ADD_WIDTHS, where, "add_width"),
        counted=_counted(data["counted"], where),
        formulas=_formulas(data["formulas"], where),
        freebie=FreebiePolicy(
            enabled=bool(freebie["enabled"]),
            bits=_positive_int(freebie["bits"], where, "freebie.bits"),
        ),
        batch_norm=BatchNormPolicy(
            fold=bool(batch_norm["fold"]),
            mults_per_element=float(batch_norm["mults_per_element"]),
            adds_per_element=float(batch_norm["adds_per_element"]),
            params_per_channel=int(batch_norm["params_per_channel"]),
        ),
        sparsity=SparsityPolicy(
            skip_zero_weights=bool(sparsity_data["skip_zero_weights"]),
            storage=storage,
            params_scale=_choice(
                sparsity_data["params_scale"], PARAMS_SCALES, where, "sparsity.params_scale"
            ),
            ops_scale=_choice(sparsity_data["ops_scale"], OPS_SCALES, where, "sparsity.ops_scale"),
        ),
        activations=_activations(data["activations"], where),
        source=where,
    )


def load_baseline(name_or_path: str) -> Baseline:
    """Load a bundled baseline by name, or a one-baseline YAML file (with a `name` key) by path."""
    bundled = _read_yaml(rules_dir() / BASELINES_FILE)
    if name_or_path in bundled:
        where = f"{rules_dir() / BASELINES_FILE}:{name_or_path}"
        return _baseline(name_or_path, _mapping(bundled[name_or_path], where, ""), where)
    path = _resolve(name_or_path, list(bundled), "baseline", "--baseline")
    data = dict(_read_yaml(path))
    name = str(data.pop("name", path.stem))
    return _baseline(name, data, str(path))


def _baseline(name: str, data: Mapping[str, Any], where: str) -> Baseline:
    _check_keys(data, _field_names(Baseline) - {"name"}, where, "")
    shape = data["input_shape"]
    if shape is not None:
        shape = tuple(_positive_int(d, where, "input_shape") for d in shape)
    for key in ("params", "ops"):
        if not isinstance(data[key], int | float) or data[key] <= 0:
            raise UserError(f"{where}: '{key}' must be a positive number, got {data[key]!r}")
    return Baseline(
        name=name,
        model=str(data["model"]),
        dataset=str(data["dataset"]),
        params=float(data["params"]),
        ops=float(data["ops"]),
        input_shape=shape,
        quality=str(data["quality"]),
    )


def _resolve(name_or_path: str, names: list[str], what: str, option: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"{what} file not found: {name_or_path}")
        return path
    if name_or_path in names:
        return rules_dir() / f"{name_or_path}.yaml"
    raise UserError(
        f"unknown {what} '{name_or_path}'; valid names: {', '.join(names)} "
        f"(or give {option} a path to a YAML file)"
    )


def _read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        return _parse_yaml(path, path.stat().st_mtime_ns)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


@lru_cache(maxsize=32)
def _parse_yaml(path: Path, mtime_ns: int) -> Mapping[str, Any]:
    """Parsed once per file version: scoring many models should not re-parse the rules."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {path}: {exc}".splitlines()[0]) from exc
    return _mapping(data, str(path), "")


def _mapping(data: Any, where: str, section: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        label = f"section '{section}'" if section else "the file"
        raise UserError(f"{where}: {label} must be a mapping of keys to values")
    return data


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _check_keys(data: Mapping[str, Any], valid: set[str], where: str, section: str) -> None:
    prefix = f"{section}." if section else ""
    for key in data:
        if key not in valid:
            raise UserError(
                f"{where}: unknown key '{prefix}{key}'; valid keys: {', '.join(sorted(valid))}"
            )
    for key in sorted(valid - set(data)):
        raise UserError(f"{where}: missing key '{prefix}{key}'")


def _section(data: Mapping[str, Any], key: str, cls: type, where: str) -> Mapping[str, Any]:
    section = _mapping(data[key], where, key)
    _check_keys(section, _field_names(cls), where, key)
    return section


def _positive_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def _activations(data: Any, where: str) -> dict[OpKind, ElementCost]:
    table = _mapping(data, where, "activations")
    valid = {kind.value for kind in ACTIVATIONS}
    costs: dict[OpKind, ElementCost] = {}
    for name, cost in table.items():
        if name not in valid:
            raise UserError(
                f"{where}: unknown activation 'activations.{name}'; "
                f"valid names: {', '.join(sorted(valid))}"
            )
        entry = _mapping(cost, where, f"activations.{name}")
        _check_keys(entry, {"mults", "adds"}, where, f"activations.{name}")
        costs[OpKind(name)] = ElementCost(float(entry["mults"]), float(entry["adds"]))
    missing = valid - {kind.value for kind in costs}
    if missing:
        raise UserError(f"{where}: activations lacks a cost for: {', '.join(sorted(missing))}")
    return costs


def _choice(value: Any, valid: tuple[str, ...], where: str, key: str) -> str:
    if value not in valid:
        raise UserError(f"{where}: unknown value {value!r} for '{key}'; valid: {', '.join(valid)}")
    return str(value)


def _kind(name: Any, where: str, key: str) -> OpKind:
    try:
        return OpKind(name)
    except ValueError:
        valid = ", ".join(kind.value for kind in OpKind)
        raise UserError(f"{where}: unknown op kind {name!r} in '{key}'; valid: {valid}") from None


def _counted(data: Any, where: str) -> CountedPolicy:
    section = _mapping(data, where, "counted")
    _check_keys(section, _field_names(CountedPolicy), where, "counted")
    kinds = section["kinds"]
    return CountedPolicy(
        kinds=None if kinds is None else frozenset(_kind(k, where, "counted.kinds") for k in kinds),
        modules_only=bool(section["modules_only"]),
    )


def _formulas(data: Any, where: str) -> dict[OpKind, str]:
    chosen: dict[OpKind, str] = {}
    for name, variant in _mapping(data or {}, where, "formulas").items():
        kind = _kind(name, where, "formulas")
        covering = [v for v, kinds in FORMULA_VARIANTS.items() if kind in kinds]
        if variant != "micronet" and variant not in covering:
            raise UserError(
                f"{where}: unknown formula {variant!r} for 'formulas.{name}'; "
                f"valid: {', '.join(['micronet', *covering])}"
            )
        chosen[kind] = str(variant)
    return chosen
