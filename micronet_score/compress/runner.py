"""Running a recipe: the stages in order, each on the model the previous one left.

`run_recipe` writes under the run folder one folder per stage (its checkpoints, ``model.pt`` as a
plain state_dict, the file the scorer reads, ``result.json``), then ``candidates.csv``,
``pareto.png`` and ``summary.md`` over every stage so far. A stage whose ``result.json`` exists
is not run again, and one that was cut short resumes from its checkpoints, so rerunning a recipe
after an interruption, or after adding stages, redoes only what is missing. A stage folder
remembers the settings that made it and refuses to resume under different ones.

Every candidate is scored in-process by `score_model` on the same object that is saved, and the
saved file scores the same with the ``micronet-score`` command recorded next to it.

Under torchrun every process runs the recipe: training, distillation and pruning's retraining
run data-parallel (see `micronet_score.compress.distributed`), while process 0 alone writes
files, scores, logs and quantizes (on its CPU); the others wait for it at the end of each stage
and read its ``result.json``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from micronet_score.api import score_model
from micronet_score.compress import distributed
from micronet_score.compress.candidates import (
    RESULT_FILE,
    Candidate,
    measured,
    read_candidate,
    write_reports,
)
from micronet_score.compress.data import Loader, make_loaders
from micronet_score.compress.distributed import World
from micronet_score.compress.files import (
    EXPORT_FILE,
    WEIGHTS_FILE,
    claim,
    lineage,
    load_weights,
    save_atomic,
    write_json,
)
from micronet_score.compress.spec import (
    ConfigT,
    DistillStage,
    PruneStage,
    QuantizeStage,
    Recipe,
    Stage,
    Teacher,
    TrainStage,
    build_model,
    stage_kind,
)
from micronet_score.compress.stages import prune_stage, quantize_stage
from micronet_score.compress.train import Progress, distill, evaluate, resolve_device, train
from micronet_score.results import Report

MODEL_FACTORY = "micronet_score.compress.models:create_model"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Run:
    """What every stage needs besides its model: the recipe, the data, the input shape the
    scorer uses, where progress and log lines go (nowhere outside process 0), and the layout of
    the processes."""

    recipe: Recipe
    train_loader: Loader
    test_loader: Loader
    input_shape: tuple[int, ...]
    progress: Progress | None
    log: Log
    world: World = field(default_factory=World)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.recipe.device)

    def config(self, cfg: ConfigT) -> ConfigT:
        """``cfg`` on the run's device (the device is not part of a stage's settings)."""
        return replace(cfg, device=self.recipe.device)

    def evaluate(self, model: nn.Module) -> float:
        """Test accuracy; every process calls it and gets the same figure."""
        return evaluate(model, self.test_loader, self.device, world=self.world)

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
    can be followed, and interrupted, at any point. Under torchrun, call it in every process;
    only process 0 uses ``progress`` and ``log``.
    """
    world = distributed.ensure_process_group(recipe.device)
    if not world.main:
        progress, log = None, None
    train_loader, test_loader = _loaders(recipe, world)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(next(iter(test_loader))[0].shape[1:])
    run = Run(recipe, train_loader, test_loader, shape, progress, log or (lambda _: None), world)
    torch.manual_seed(recipe.seed)
    model = recipe.build_model()
    candidates: list[Candidate] = []
    if recipe.weights is not None:
        load_weights(model, Path(recipe.weights), recipe.model)
        candidates.append(_measure_input(model, run))
    for index, stage in enumerate(recipe.stages):
        folder = out / stage.name
        if world.main:
            claim(folder, lineage(recipe, index))
        distributed.barrier()  # every process sees the same files from here
        result = folder / RESULT_FILE
        if result.exists():
            candidate = read_candidate(result)
            if not isinstance(stage, QuantizeStage):
                load_weights(model, folder / WEIGHTS_FILE, recipe.model)
            run.log(f"{stage.name}: done in an earlier run, accuracy {candidate.accuracy:.2%}")
        else:
            run.log(f"{stage.name}: {stage_kind(stage)} stage")
            start = time.perf_counter()
            candidate = _run_stage(stage, model, folder, run, candidates)
            candidate = replace(candidate, seconds=round(time.perf_counter() - start, 1))
            if world.main:
                write_json(result, asdict(candidate))
            distributed.barrier()
            candidate = read_candidate(result)
            run.log(
                f"{stage.name}: accuracy {candidate.accuracy:.2%}, score {candidate.score:.5g}, "
                f"{candidate.seconds:.0f} s"
            )
        candidates.append(candidate)
        if world.main:
            write_reports(out, recipe, candidates)
    return tuple(candidates)


def _loaders(recipe: Recipe, world: World) -> tuple[Loader, Loader]:
    """The recipe's loaders; under torchrun process 0 downloads first and the others wait."""

    def load(download: bool) -> tuple[Loader, Loader]:
        return make_loaders(
            recipe.dataset, recipe.data_dir, recipe.batch_size, download=download,
            num_workers=recipe.num_workers, verify_checksums=recipe.verify_checksums,
        )

    first = load(recipe.download) if world.main else None
    distributed.barrier()
    return first if first is not None else load(False)


def _run_stage(
    stage: Stage, model: nn.Module, folder: Path, run: Run, before: list[Candidate]
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
        note = prune_stage(stage, model, folder, run, before[-1].accuracy)
        return _float_candidate(stage, model, folder, run, note)
    if not run.world.main:  # quantization runs on process 0's CPU alone
        return _elsewhere(stage)
    return quantize_stage(stage, model, folder, run)


def _elsewhere(stage: Stage) -> Candidate:
    """What a process other than 0 returns for a stage: process 0 measures it and writes its
    ``result.json``, which every process then reads."""
    return Candidate(stage.name, stage_kind(stage), 0.0, 0.0, 0.0, 0.0, 0.0, "", "", (), 0.0, "")


def _measure_input(model: nn.Module, run: Run) -> Candidate:
    """The starting weights as a candidate, so stage commands show their before and after."""
    assert run.recipe.weights is not None
    accuracy = run.evaluate(model)
    cpu = copy.deepcopy(model).cpu().eval()
    report = run.score(cpu)
    kwargs = {"name": run.recipe.model, "num_classes": run.recipe.num_classes,
              **run.recipe.model_args}
    args = ("--arch", MODEL_FACTORY, "--arch-kwargs", json.dumps(kwargs), *run.score_args())
    file = str(Path(run.recipe.weights).resolve())
    return measured("input", "input", accuracy, report, cpu, file, args, "the starting weights")


def _float_candidate(
    stage: Stage, model: nn.Module, folder: Path, run: Run, notes: str
) -> Candidate:
    """Save a float stage's model (state_dict to chain and resume from, .pt2 to score) and
    measure it; the accuracy is measured by every process, the rest by process 0."""
    accuracy = run.evaluate(model)
    if not run.world.main:
        return _elsewhere(stage)
    cpu = copy.deepcopy(model).cpu().eval()
    save_atomic(cpu.state_dict(), folder / WEIGHTS_FILE)
    program = torch.export.export(cpu, (torch.zeros(1, *run.input_shape),))
    torch.export.save(program, folder / EXPORT_FILE)
    file = f"{folder.name}/{EXPORT_FILE}"
    return measured(stage.name, stage_kind(stage), accuracy, run.score(program), cpu, file,
                    run.score_args(), notes)


def _teacher_model(teacher: Teacher, folder: Path, run: Run) -> tuple[nn.Module, float]:
    """The teacher, loaded or trained (resumably, in ``folder``), and its test accuracy."""
    torch.manual_seed(run.recipe.seed)
    model = build_model(teacher.model, teacher.model_args, run.recipe.num_classes)
    saved = folder / WEIGHTS_FILE
    if teacher.weights is not None or saved.exists():
        load_weights(model, Path(teacher.weights) if teacher.weights else saved, teacher.model)
    else:
        assert teacher.train is not None
        run.log(f"training the teacher {teacher.model}")
        train(model, run.train_loader, run.test_loader, run.config(teacher.train),
              checkpoint_dir=folder, progress=run.progress)
        if run.world.main:
            save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, saved)
    accuracy = run.evaluate(model)
    run.log(f"teacher {teacher.model}: accuracy {accuracy:.2%}")
    return model, accuracy
