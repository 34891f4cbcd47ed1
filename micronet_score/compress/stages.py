"""The prune and quantize stages of a recipe run (train and distill are `train`'s own calls).

Pruning retrains after each step with one `train` call: one optimizer (SGD's momentum is kept
from epoch to epoch) and one learning-rate schedule over the step's ``max_epochs``, stopped early
once the accuracy is back to the bar.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from micronet_score.compress.candidates import Candidate, measured
from micronet_score.compress.configs import TrainConfig
from micronet_score.compress.data import Loader
from micronet_score.compress.files import EXPORT_FILE, WEIGHTS_FILE, save_atomic
from micronet_score.compress.progress import EpochMetrics, Progress
from micronet_score.compress.prune import (
    PruneResult,
    Retrain,
    RetrainStep,
    global_sparsity,
    prune_iteratively,
)
from micronet_score.compress.quantize import (
    calibration_inputs,
    fx_state_dict,
    quantize_fx,
    quantize_pt2e,
    save_pt2e,
)
from micronet_score.compress.spec import PruneStage, QuantizeStage, stage_kind
from micronet_score.compress.train import evaluate, train

if TYPE_CHECKING:
    from micronet_score.compress.runner import Run

LAYER_SPARSITY_FILE = "layer_sparsity.csv"
FX_FACTORY = "micronet_score.compress.quantize:fx_quantized_model"


def retrainer(
    config: TrainConfig, train_loader: Loader, test_loader: Loader, progress: Progress | None
) -> Retrain:
    """The `prune.Retrain` of a recipe: `train` with ``config`` for up to ``max_epochs`` epochs
    in one call (so one optimizer and one cosine schedule over ``max_epochs``), ending after the
    first epoch whose test accuracy reaches ``min_accuracy``; its progress lines name the step.

    The seed follows the sparsity the step reached, so a resumed stage retrains exactly as an
    uninterrupted one would, and no two steps see the same data order."""

    def retrain(model: nn.Module, max_epochs: int, min_accuracy: float, step: RetrainStep) -> float:
        seed = config.seed + round(global_sparsity(model) * 1e4)

        def back_to_the_bar(metrics: EpochMetrics) -> bool:
            return metrics.test_acc >= min_accuracy

        result = train(model, train_loader, test_loader,
                       replace(config, epochs=max_epochs, seed=seed), progress=progress,
                       label=step.label, stop=back_to_the_bar)
        return result.test_acc

    return retrain


def prune_stage(
    stage: PruneStage, model: nn.Module, folder: Path, run: Run, entry_accuracy: float
) -> str:
    """Prune ``model`` in place as ``stage`` says, checkpointing in ``folder``; write
    ``layer_sparsity.csv`` there and return the stage's note for the reports."""
    bars = [stage.min_accuracy or 0.0]
    if stage.max_drop is not None:
        bars.append(entry_accuracy - stage.max_drop)
    retrain = retrainer(run.config(stage.retrain), run.train_loader, run.test_loader,
                        run.progress)
    result = prune_iteratively(
        model, retrain, step=stage.step, target=stage.target_sparsity, steps=stage.steps,
        max_epochs=stage.max_epochs, min_accuracy=max(bars), checkpoint_dir=folder,
    )
    note = prune_note(result)
    if run.world.main:
        write_layer_sparsity(folder / LAYER_SPARSITY_FILE, result)
    run.log(f"{stage.name}: {note}")
    return note


def write_layer_sparsity(path: Path, result: PruneResult) -> None:
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


def prune_note(result: PruneResult) -> str:
    """``"3 steps: 25.0% at 98.06%; …"``: each step's sparsity and accuracy, for the reports."""
    steps = "; ".join(
        f"{step.sparsity:.1%} at {step.accuracy:.2%}{'' if step.accepted else ' (undone)'}"
        for step in result.steps
    )
    reached = "" if result.reached_target else ", stopped before the target"
    return f"{len(result.steps)} steps: {steps}{reached}"


def quantize_stage(stage: QuantizeStage, model: nn.Module, folder: Path, run: Run) -> Candidate:
    """Quantize a copy of ``model`` on the CPU, save it in ``folder``, measure and score it."""
    torch.manual_seed(run.recipe.seed)
    batches = calibration_inputs(run.train_loader, stage.calibration_batches)
    folder.mkdir(parents=True, exist_ok=True)
    scorable: nn.Module | torch.export.ExportedProgram
    args: tuple[str, ...] = ()
    if stage.method == "fx":
        runnable = scorable = quantize_fx(model, batches, skip=stage.skip, backend=stage.backend)
        save_atomic(fx_state_dict(runnable), folder / WEIGHTS_FILE)
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
    return measured(stage.name, stage_kind(stage), accuracy, report, runnable,
                    f"{folder.name}/{file}", (*args, *run.score_args()),
                    f"int8 ({method}); {skipped}")
