"""Rule sets and baselines, loaded from YAML and validated so that a typo fails loudly at load time.

The YAML files under `rules/` are the single source of the constants and choices of each scoring
convention; the code only knows how to apply them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from micronet_score import schema
from micronet_score.errors import UserError
from micronet_score.opkinds import activation_kinds, all_kinds, formula_variants
from micronet_score.safe_yaml import display, read_yaml
from micronet_score.schema import spec

STORAGE_FORMATS = ("dense", "sparse", "kernel_mask", "filter_mask")
ADD_WIDTHS = ("activation", "accumulator")
PARAMS_SCALES = ("none", "density")
OPS_SCALES = ("none", "filter_density")
BASELINES_FILE = "baselines.yaml"
# Sane bounds, far beyond any real value, that keep every score finite: widths in bits, costs
# per element or channel, baseline figures (a baseline below 1 param or op would inflate scores).
# An input shape's element count is bounded where it is used (limits.py), with an option to raise.
MAX_BITS = 64
MAX_COST = 1e6
MAX_BASELINE = 1e15
MAX_INPUT_DIM = 1 << 20


def _includes_dense(storage: tuple[str, ...], path: str) -> str | None:
    return None if "dense" in storage else f"'{path}' must include 'dense'"


def _known_variants(chosen: Mapping[str, str], path: str) -> str | None:
    for kind, variant in chosen.items():
        valid = formula_variants(kind)
        if variant not in valid:
            return (f"unknown formula {variant!r} for '{path}.{kind}'; "
                    f"valid: {', '.join(valid)}")
    return None


# The fields below are the schema of a rule file (schema.build checks a document against them):
# each field's type, and spec(...) for bounds, choices and checks beyond the type.


@dataclass(frozen=True)
class ElementCost:
    """Operations per output element of an element-wise function."""

    mults: float = field(metadata=spec(low=0, high=MAX_COST))
    adds: float = field(metadata=spec(low=0, high=MAX_COST))


@dataclass(frozen=True)
class FreebiePolicy:
    enabled: bool
    bits: int = field(metadata=spec(low=1, high=MAX_BITS))


@dataclass(frozen=True)
class BatchNormPolicy:
    fold: bool
    mults_per_element: float = field(metadata=spec(low=0, high=MAX_COST))
    adds_per_element: float = field(metadata=spec(low=0, high=MAX_COST))
    params_per_channel: int = field(metadata=spec(low=0, high=MAX_COST))


@dataclass(frozen=True)
class SparsityPolicy:
    """How zeros enter the score: per output channel and per tensor (official rules), or as
    whole-model factors measured over conv and linear weights (the course's rules)."""

    skip_zero_weights: bool
    storage: tuple[str, ...] = field(metadata=spec(choices=STORAGE_FORMATS, check=_includes_dense))
    params_scale: str = field(metadata=spec(choices=PARAMS_SCALES))
    ops_scale: str = field(metadata=spec(choices=OPS_SCALES))


@dataclass(frozen=True)
class CountedPolicy:
    """Which nodes a rule set sees. `kinds` None means every kind; `modules_only` ignores ops
    written as functions (a module-hook counter cannot see them)."""

    kinds: frozenset[str] | None = field(metadata=spec(choices=all_kinds))
    modules_only: bool


@dataclass(frozen=True)
class RuleSet:
    name: str
    description: str
    default_baseline: str
    accumulator_bits: int = field(metadata=spec(low=1, high=MAX_BITS))
    default_bits: int = field(metadata=spec(low=1, high=MAX_BITS))
    add_width: str = field(metadata=spec(choices=ADD_WIDTHS))
    counted: CountedPolicy
    formulas: Mapping[str, str] = field(metadata=spec(keys=lambda: frozenset(all_kinds()),
                                                      check=_known_variants))
    freebie: FreebiePolicy
    batch_norm: BatchNormPolicy
    sparsity: SparsityPolicy
    activations: Mapping[str, ElementCost] = field(metadata=spec(
        keys=activation_kinds, all_keys=True
    ))
    source: str = field(metadata=spec(loaded=False))


@dataclass(frozen=True)
class Baseline:
    name: str = field(metadata=spec(loaded=False))
    model: str
    dataset: str
    params: float = field(metadata=spec(low=1, high=MAX_BASELINE))
    ops: float = field(metadata=spec(low=1, high=MAX_BASELINE))
    input_shape: tuple[int, ...] | None = field(metadata=spec(
        low=1, high=MAX_INPUT_DIM, items=(1, 8)
    ))
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
    return list(_bundled_baselines())


def load_rules(name_or_path: str) -> RuleSet:
    """Load a bundled rule set by name, or a rule file by path.

    Raises UserError (one line: the file, the key path, the valid values) for an unreadable or
    hostile file (see safe_yaml) or any value outside the schema declared by the fields above.
    """
    path = _resolve(name_or_path, available_rules(), "rule set", "--rules")
    where = display(path)
    return schema.build(RuleSet, read_yaml(path), where, source=str(path))


def load_baseline(name_or_path: str) -> Baseline:
    """Load a bundled baseline by name, or a one-baseline YAML file (with a `name` key) by path.

    Raises UserError as load_rules does.
    """
    bundled = _bundled_baselines()
    if name_or_path in bundled:
        where = display(rules_dir() / BASELINES_FILE)
        return schema.build(Baseline, bundled[name_or_path], where, name_or_path,
                            name=name_or_path)
    path = _resolve(name_or_path, list(bundled), "baseline", "--baseline")
    where = display(path)
    data = read_yaml(path)
    if isinstance(data, dict) and "name" in data:
        data = dict(data)
        name = schema.text(data.pop("name"), where, "name")
    else:
        name = path.stem
    return schema.build(Baseline, data, where, name=name)


def _bundled_baselines() -> dict[str, Any]:
    path = rules_dir() / BASELINES_FILE
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{display(path)}: the file must be a mapping of baseline names to entries")
    return data


def _resolve(name_or_path: str, names: list[str], what: str, option: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise UserError(f"{what} file not found: {display(name_or_path)}")
        return path  # read_yaml refuses a folder, a FIFO or a device, naming it
    if name_or_path in names:
        return rules_dir() / f"{name_or_path}.yaml"
    raise UserError(
        f"unknown {what} '{display(name_or_path)}'; valid names: {', '.join(names)} "
        f"(or give {option} a path to a YAML file)"
    )
