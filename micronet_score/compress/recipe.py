"""Recipes: one model, one data set and a chain of compression stages, written in YAML.

This module gathers the recipe API in one place; the code lives in `spec` (what a recipe holds,
read and checked from YAML), `runner` (running it, resumably, under torchrun too), `stages` (the
prune and quantize stages), `candidates` (what a run measures and reports) and `files` (a run
folder's other files).
"""

from __future__ import annotations

from micronet_score.compress.candidates import (
    CANDIDATES_FILE,
    CSV_COLUMNS,
    PARETO_FILE,
    RESULT_FILE,
    SUMMARY_FILE,
    Candidate,
    measured,
    read_candidate,
    summary,
    weight_sparsity,
    write_reports,
)
from micronet_score.compress.files import (
    EXPORT_FILE,
    LINEAGE_FILE,
    WEIGHTS_FILE,
    claim,
    lineage,
    load_weights,
)
from micronet_score.compress.runner import MODEL_FACTORY, Log, Run, run_recipe
from micronet_score.compress.spec import (
    ACCURACY_BAR,
    DEFAULT_PRUNE_TARGET,
    PRUNE_RETRAIN,
    RECIPES_DIR,
    SCORE_BAR,
    STAGE_KINDS,
    DistillStage,
    PruneStage,
    QuantizeStage,
    Recipe,
    RecipeError,
    Stage,
    Teacher,
    TrainStage,
    build_model,
    bundled_recipes,
    load_recipe,
    parse_recipe,
    stage_kind,
)
from micronet_score.compress.stages import (
    FX_FACTORY,
    LAYER_SPARSITY_FILE,
    prune_note,
    retrainer,
)

__all__ = [
    "ACCURACY_BAR", "CANDIDATES_FILE", "CSV_COLUMNS", "DEFAULT_PRUNE_TARGET", "EXPORT_FILE",
    "FX_FACTORY", "LAYER_SPARSITY_FILE", "LINEAGE_FILE", "MODEL_FACTORY", "PARETO_FILE",
    "PRUNE_RETRAIN", "RECIPES_DIR", "RESULT_FILE", "SCORE_BAR", "STAGE_KINDS", "SUMMARY_FILE",
    "WEIGHTS_FILE", "Candidate", "DistillStage", "Log", "PruneStage", "QuantizeStage", "Recipe",
    "RecipeError", "Run", "Stage", "Teacher", "TrainStage", "build_model", "bundled_recipes",
    "claim", "lineage", "load_recipe", "load_weights", "measured", "parse_recipe", "prune_note",
    "read_candidate", "retrainer", "run_recipe", "stage_kind", "summary", "weight_sparsity",
    "write_reports",
]
