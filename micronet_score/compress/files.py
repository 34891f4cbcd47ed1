"""The files of a run folder that are not reports: a stage's lineage (``stage.json``), its weights
(``model.pt``, a plain state_dict) and atomic writes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from micronet_score.compress.spec import (
    DEFAULT_PRUNE_TARGET,
    PruneStage,
    Recipe,
    RecipeError,
    stage_kind,
)

LINEAGE_FILE = "stage.json"
WEIGHTS_FILE = "model.pt"
EXPORT_FILE = "model.pt2"


def lineage(recipe: Recipe, index: int) -> dict[str, Any]:
    """The settings that determine stage ``index``'s result: the model, data, seed, starting
    weights and every stage up to it (not where the data lives, whether its checksums are
    verified, or which device runs it).

    A prune stage's schedule is written as it was before a stage could give ``steps``
    (``steps`` only when given, the default target spelled out), so folders made then still
    match."""
    core = {key: getattr(recipe, key) for key in
            ("model", "model_args", "dataset", "batch_size", "num_classes", "seed", "weights")}
    stages = []
    for stage in recipe.stages[: index + 1]:
        settings = {"stage": stage_kind(stage), **asdict(stage)}
        if isinstance(stage, PruneStage) and stage.steps is None:
            del settings["steps"]
            if stage.target is None:
                settings["target"] = DEFAULT_PRUNE_TARGET
        _drop_devices(settings)
        stages.append(settings)
    result: dict[str, Any] = json.loads(json.dumps({**core, "stages": stages}))
    return result


def _drop_devices(settings: dict[str, Any]) -> None:
    settings.pop("device", None)
    for value in settings.values():
        if isinstance(value, dict):
            _drop_devices(value)


def claim(folder: Path, settings: dict[str, Any]) -> None:
    """Mark ``folder`` as made by ``settings`` (a `lineage`), or raise `RecipeError` if other
    settings made what is in it."""
    path = folder / LINEAGE_FILE
    if path.exists():
        if json.loads(path.read_text(encoding="utf-8")) != settings:
            raise RecipeError(
                f"{folder} holds a stage made with other settings; delete it or choose "
                "another output folder"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def load_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load a state_dict, or a training checkpoint's, into ``model``; a missing, unreadable or
    mismatched file is a one-line `RecipeError` (``name`` names the model in it)."""
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


def save_atomic(state: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary name, then renamed: an interrupted save never looks done."""
    partial = path.with_suffix(".partial")
    torch.save(dict(state), partial)
    partial.replace(path)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
