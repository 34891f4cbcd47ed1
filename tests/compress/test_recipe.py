"""Recipes: validation on load, the bundled pipelines, a tiny run end to end (files, scores,
resuming), and, marked slow, the digits recipe against its accuracy and score targets."""

from __future__ import annotations

import contextlib
import csv
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from micronet_score.cli import score_app
from micronet_score.compress import models
from micronet_score.compress.data import DataError, write_cifar_fixture
from micronet_score.compress.models import DenseNet
from micronet_score.compress.prune import global_sparsity, layer_sparsity
from micronet_score.compress.recipe import (
    CSV_COLUMNS,
    Candidate,
    DistillStage,
    PruneStage,
    QuantizeStage,
    RecipeError,
    TrainStage,
    lineage,
    load_recipe,
    parse_recipe,
    run_recipe,
)
from micronet_score.compress.train import EpochMetrics

TINY = "tiny_densenet_for_recipes"


def tiny_densenet(**kwargs: Any) -> DenseNet:
    """One layer per stage, growth 2: 848 conv and linear weights, 982 parameters."""
    return DenseNet((1, 1, 1, 1), growth_rate=2, **kwargs)


@contextlib.contextmanager
def tiny_model_registered() -> Iterator[None]:
    """`TINY` in the model registry, only meanwhile: the registry has no way to unregister, and
    other tests check that it holds exactly the toolkit's models."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(models._REGISTRY, TINY, tiny_densenet)
        yield


@pytest.fixture(scope="module", autouse=True)
def _tiny_model() -> Iterator[None]:
    with tiny_model_registered():
        yield


# Conv and linear weights of the tiny DenseNet, by hand: stem 3*4*9 = 108; per dense layer a
# 1x1 to 8 channels and a 3x3 from 8 to 2 (8*2*9 = 144), with inputs of 4, 3, 2, 2 channels:
# 32+144, 24+144, 16+144, 16+144; transitions 6->3, 5->2, 4->2: 18, 10, 8; linear 4*10 = 40.
TINY_WEIGHTS = 108 + (32 + 144) + (24 + 144) + (16 + 144) + (16 + 144) + 18 + 10 + 8 + 40


def tiny_recipe(**stage_changes: Any) -> dict[str, Any]:
    """Train one epoch, prune half the weights in one step, quantize all but the classifier."""
    stages: list[dict[str, Any]] = [
        {"stage": "train", "name": "float", "epochs": 1, "lr": 0.05},
        {"stage": "prune", "name": "pruned", "target": 0.5, "step": 0.5, "max_epochs": 1,
         "max_drop": None, "lr": 0.01},
        {"stage": "quantize", "name": "quantized", "skip": ["linear"], "calibration_batches": 1},
    ]
    for stage in stages:
        stage.update(stage_changes.get(stage["name"], {}))
    # The generic builder with arguments, as `TINY` is built: the run then saves files the
    # scorer rebuilds without this test's registry entry.
    return {"model": "densenet", "model_args": {"growth_rate": 2, "blocks": [1, 1, 1, 1]},
            "dataset": "digits", "batch_size": 256, "rules": "imt-2022", "stages": stages}


class Epochs:
    """Counts the epochs a run trains."""

    def __init__(self) -> None:
        self.ended: list[int] = []

    def start_epoch(self, epoch: int, epochs: int, steps: int, *, label: str = "") -> None:
        pass

    def advance(self, steps: int, loss: float, accuracy: float, images_per_s: float) -> None:
        pass

    def end_epoch(self, metrics: EpochMetrics, *, label: str = "") -> None:
        self.ended.append(metrics.epoch)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Candidate, ...]]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny") / "run"
    return out, run_recipe(parse_recipe(tiny_recipe(), "tiny"), out)


def write_recipe(folder: Path, data: object) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# --- Validation --------------------------------------------------------------------------------


def test_the_cifar_recipe_is_the_teams_pipeline() -> None:
    recipe = load_recipe("cifar10")
    mixup, distilled, finetuned, pruned, quantized = recipe.stages
    assert (recipe.model, recipe.dataset, recipe.rules) == ("densenet121_gr4_g2", "cifar10",
                                                             "imt-2022")
    # Groups of 2 on both bottleneck convs: 70,922 parameters (derived in test_models).
    built = recipe.build_model()
    assert sum(p.numel() for p in built.parameters()) == 70_922
    convs = [built.get_submodule(f"dense2.3.{name}") for name in ("conv1", "conv2")]
    assert [conv.groups for conv in convs if isinstance(conv, nn.Conv2d)] == [2, 2]
    assert isinstance(mixup, TrainStage) and mixup.config.mixup_alpha > 0
    assert isinstance(distilled, DistillStage)
    assert (distilled.config.optimizer, distilled.teacher.model) == ("adam", "densenet121_gr8")
    assert isinstance(finetuned, TrainStage)
    assert (finetuned.config.optimizer, finetuned.config.lr) == ("sgd", 0.001)
    assert isinstance(pruned, PruneStage)
    # Ten full steps of 10% of the remaining weights (test_prune counts the zeros of each).
    assert (pruned.steps, pruned.step, pruned.target, pruned.max_epochs, pruned.min_accuracy) == (
        10, 0.1, None, 50, 0.90)
    assert pruned.schedule == (0.1,) * 10
    assert recipe.verify_checksums
    assert isinstance(quantized, QuantizeStage)
    assert (quantized.method, quantized.backend, quantized.skip) == (
        "fx", "fbgemm", ("trans3", "dense1", "dense2"))


def test_the_digits_recipe() -> None:
    recipe = load_recipe("digits")
    trained, pruned, quantized = recipe.stages
    assert (recipe.model, recipe.dataset) == ("densenet121_gr4_g2", "digits")
    assert isinstance(trained, TrainStage) and trained.config.epochs == 10
    assert isinstance(pruned, PruneStage) and pruned.target == 0.5
    assert isinstance(quantized, QuantizeStage) and quantized.skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(epochs=3), "recipe.yaml: unknown key 'epochs'; valid keys: "
         "baseline, batch_size, data_dir, dataset, device, download, model, model_args, name, "
         "num_classes, num_workers, rules, seed, stages, verify_checksums, weights"),
        (lambda r: r["stages"][1].update(targt=0.5),
         "recipe.yaml: stages[1] (prune 'pruned'): unknown key 'targt'; valid keys: "),
        (lambda r: r["stages"][0].update(seed=1),
         "recipe.yaml: stages[0] (train 'float'): unknown key 'seed'"),
        (lambda r: r["stages"].insert(0, {"stage": "distill", "teacher": {
            "model": TINY, "train": {"epochs": 1, "speed": 2}}}),
         "recipe.yaml: stages[0] (distill 'distill'): teacher.train: unknown key 'speed'"),
    ],
)
def test_an_unknown_key_is_named_with_the_file(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = tiny_recipe()
    change(data)
    path = write_recipe(tmp_path, data)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert str(error.value).startswith(str(path.parent / message))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"float": {"lr": "fast"}}, "stages[0] (train 'float'): 'lr' must be a number, got 'fast'"),
        ({"float": {"epochs": 1.5}}, "'epochs' must be an integer, got 1.5"),
        ({"float": {"epochs": 0}}, "stages[0] (train 'float'): epochs must be at least 1"),
        ({"float": {"optimizer": "rmsprop"}}, "'optimizer' must be one of 'sgd', 'adam'"),
        ({"quantized": {"skip": "linear"}}, "'skip' must be a list of names, got 'linear'"),
        ({"quantized": {"method": "qat"}}, "'method' must be one of 'fx', 'pt2e'"),
        ({"quantized": {"calibration_batches": 0}}, "calibration_batches must be at least 1"),
        ({"pruned": {"target": 1.0}}, "target must lie strictly between 0 and 1, got 1.0"),
        ({"pruned": {"steps": 2}}, "stages[1] (prune 'pruned'): give either a target sparsity "
         "or a number of steps, not both or neither"),
        ({"pruned": {"steps": 0, "target": None}}, "steps must be at least 1, got 0"),
        ({"pruned": {"steps": 1.5, "target": None}}, "'steps' must be an integer, got 1.5"),
        ({"pruned": {"name": "float"}}, "two stages are named 'float'"),
        ({"pruned": {"name": "a/b"}}, "'name' must be letters, digits"),
        ({"pruned": {"stage": "shrink"}}, "'stage' must be one of: train, distill, prune"),
    ],
)
def test_bad_values_are_refused_before_any_work(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError, match=_literal(message)):
        parse_recipe(tiny_recipe(**changes), "r.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(model="resnet7"), "unknown model 'resnet7'"),
        (lambda r: r.update(model_args={"growth": 4}),
         "model 'densenet' cannot be built with {'growth': 4}: "),
        (lambda r: r.update(model_args=[4]), "'model_args' must be a mapping of argument names"),
        (lambda r: r["stages"].insert(0, {"stage": "distill", "teacher": {
            "model": "densenet", "model_args": {"growth_rat": 8}, "weights": "t.pt"}}),
         "model 'densenet' cannot be built with {'growth_rat': 8}: "),
        (lambda r: r.update(dataset="mnist"), "unknown dataset 'mnist'"),
        (lambda r: r.update(rules="fifa"), "unknown rule set 'fifa'"),
        (lambda r: r.update(stages=[]), "'stages' must be a non-empty list"),
        (lambda r: r.pop("model"), "missing key 'model'"),
        (lambda r: r["stages"].append({"stage": "train", "name": "more"}),
         "quantize stage 'quantized' must be the last stage"),
        (lambda r: r["stages"].pop(0), "stage 'pruned' needs a trained model"),
        (lambda r: r["stages"].insert(0, {"stage": "distill", "teacher": {"model": TINY}}),
         "teacher: give exactly one of 'weights' and 'train'"),
    ],
)
def test_recipes_that_cannot_run_are_refused(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = tiny_recipe()
    change(data)
    with pytest.raises(RecipeError, match=_literal(message)):
        parse_recipe(data, "r.yaml")


def test_a_prune_stage_gives_a_target_or_a_number_of_steps() -> None:
    by_steps = parse_recipe(tiny_recipe(pruned={"target": None, "steps": 3}), "r.yaml")
    by_target = parse_recipe(tiny_recipe(), "r.yaml")
    neither = parse_recipe(tiny_recipe(pruned={"target": None}), "r.yaml")
    stages = [recipe.stages[1] for recipe in (by_steps, by_target, neither)]
    assert all(isinstance(stage, PruneStage) for stage in stages)
    assert [stage.schedule for stage in stages if isinstance(stage, PruneStage)] == [
        (0.5,) * 3,
        (0.5,),  # 0.5 of everything reaches the target 0.5 in one step
        (0.5, 1 - 0.35 / 0.5),  # the default target 0.65: 0.5, then 0.3 of the half left
    ]
    # A stage folder records the schedule as before `steps` existed unless it is given, so
    # folders made then are still recognised.
    assert [lineage(r, 1)["stages"][1].get("steps", "absent") for r in (by_steps, by_target)] == [
        3, "absent"]
    assert lineage(neither, 1)["stages"][1]["target"] == 0.65


def test_own_cifar_copies_need_verify_checksums_false(tmp_path: Path) -> None:
    """A folder in CIFAR-10's format whose bytes are not the release's: refused by default in
    one line that says how to use it, read with ``verify_checksums: false``."""
    write_cifar_fixture(tmp_path / "data", n_train=20, n_test=10)
    data = tiny_recipe()
    data.update(dataset="cifar10", data_dir=str(tmp_path / "data"), batch_size=10)
    data["stages"] = [{"stage": "train", "name": "float", "epochs": 1, "lr": 0.05}]
    with pytest.raises(DataError) as error:
        run_recipe(parse_recipe(data, "own copy"), tmp_path / "run")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'data' / 'cifar-10-batches-py' / 'data_batch_1'} is "
                              "not the official CIFAR-10 release's (its MD5 checksum differs); ")
    assert "set 'verify_checksums: false' in the recipe" in message
    (candidate,) = run_recipe(parse_recipe({**data, "verify_checksums": False}, "own copy"),
                              tmp_path / "run")
    assert (candidate.accuracy * 10).is_integer()  # the fixture's 10 test images


def test_model_args_reach_the_builder() -> None:
    recipe = parse_recipe(tiny_recipe() | {"model_args": {"growth_rate": 4, "groups": 2}}, "r.yaml")
    assert recipe.model_args == {"growth_rate": 4, "groups": 2}
    built = recipe.build_model()
    assert sum(p.numel() for p in built.parameters()) == 70_922  # densenet121_gr4_g2's count


def test_a_missing_recipe_names_the_bundled_ones() -> None:
    with pytest.raises(RecipeError, match=r"no recipe file nope\.yaml; .* cifar10, digits"):
        load_recipe("nope.yaml")


def _literal(text: str) -> str:
    return re.escape(text)


# --- A tiny run --------------------------------------------------------------------------------


def test_a_run_writes_every_stage_and_the_reports(
    tiny_run: tuple[Path, tuple[Candidate, ...]],
) -> None:
    out, candidates = tiny_run
    assert [(c.stage, c.kind) for c in candidates] == [
        ("float", "train"), ("pruned", "prune"), ("quantized", "quantize")]
    for stage, files in {
        "float": {"checkpoint.pt", "metrics.jsonl", "model.pt", "model.pt2"},
        "pruned": {"prune_step_001.pt", "layer_sparsity.csv", "model.pt", "model.pt2"},
        "quantized": {"model.pt"},
    }.items():
        assert {p.name for p in (out / stage).iterdir()} == files | {"result.json", "stage.json"}
    with open(out / "candidates.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["stage"] for row in rows] == ["float", "pruned", "quantized"]
    assert [row["bits"] for row in rows] == ["16", "16", "8+16"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert all(c.command in summary for c in candidates)


def test_pruning_zeroes_half_the_weights(tiny_run: tuple[Path, tuple[Candidate, ...]]) -> None:
    out, candidates = tiny_run
    model = DenseNet((1, 1, 1, 1), growth_rate=2)
    model.load_state_dict(torch.load(out / "pruned" / "model.pt", weights_only=True))
    assert global_sparsity(model) == (TINY_WEIGHTS // 2) / TINY_WEIGHTS
    # The sparsity column is over the conv and linear weights alone, not the linear's 10 biases
    # the scorer also counts as conv and linear parameters.
    assert candidates[1].sparsity == (TINY_WEIGHTS // 2) / TINY_WEIGHTS == 0.5
    assert candidates[0].sparsity == 0.0
    # Quantizing to int8 keeps every zero and may round more weights to zero.
    assert candidates[2].sparsity >= 0.5
    with open(out / "candidates.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert rows[1]["sparsity"] == "0.5000"
    with open(out / "pruned" / "layer_sparsity.csv", newline="", encoding="utf-8") as file:
        table = list(csv.reader(file))
    assert table[0] == ["layer", "step 1 (50.0%)"]
    per_layer = {name: float(value) for name, value in table[1:]}
    assert per_layer == pytest.approx(layer_sparsity(model), abs=5e-5)


# Loading a quantized state_dict and running quantized cats make torch warn; neither matters here.
@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated", "ignore:All inputs of this cat")
def test_every_saved_candidate_scores_the_same_with_the_scorer(
    tiny_run: tuple[Path, tuple[Candidate, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, candidates = tiny_run
    monkeypatch.chdir(out)
    for candidate in candidates:
        args = shlex.split(candidate.command)[1:]
        result = CliRunner().invoke(score_app, [*args, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["score"] == pytest.approx(candidate.score, rel=1e-12)


def test_a_finished_run_is_not_redone(tiny_run: tuple[Path, tuple[Candidate, ...]]) -> None:
    out, candidates = tiny_run
    epochs, lines = Epochs(), list[str]()
    again = run_recipe(parse_recipe(tiny_recipe(), "tiny"), out, progress=epochs,
                       log=lines.append)
    assert again == candidates
    assert epochs.ended == []
    assert lines == [f"{c.stage}: done in an earlier run, accuracy {c.accuracy:.2%}"
                     for c in candidates]


def test_a_stage_folder_refuses_other_settings(
    tiny_run: tuple[Path, tuple[Candidate, ...]],
) -> None:
    out, _ = tiny_run
    changed = parse_recipe(tiny_recipe(pruned={"lr": 0.02}), "tiny")
    with pytest.raises(RecipeError, match=_literal(f"{out / 'pruned'} holds a stage made with "
                                                   "other settings")):
        run_recipe(changed, out)


def test_a_stage_command_starts_from_weights_and_reports_them(
    tiny_run: tuple[Path, tuple[Candidate, ...]], tmp_path: Path
) -> None:
    out, candidates = tiny_run
    data = tiny_recipe()
    data["stages"] = data["stages"][2:]
    data["weights"] = str(out / "pruned" / "model.pt")
    start, quantized = run_recipe(parse_recipe(data, "one stage"), tmp_path)
    assert (start.stage, start.kind, start.file) == ("input", "input", data["weights"])
    assert (start.accuracy, start.score) == (candidates[1].accuracy, candidates[1].score)
    assert (quantized.accuracy, quantized.score) == (candidates[2].accuracy, candidates[2].score)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    data = tiny_recipe()
    data["weights"] = str(tmp_path / "w.pt")
    with pytest.raises(RecipeError, match=_literal(f"{tmp_path / 'w.pt'} does not hold weights "
                                                   "of densenet")):
        run_recipe(parse_recipe(data, "r"), tmp_path / "run")


# --- The digits recipe, for real --------------------------------------------------------------


@pytest.mark.slow
def test_the_digits_recipe_meets_its_targets(tmp_path: Path) -> None:
    """Under five minutes on two cores; float >= 90%, pruning costs at most 3 points and
    quantization 2 more; the score falls at every stage; each saved file scores the same."""
    out = tmp_path / "digits"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "from micronet_score.compress.cli import main; main()",
         "run", "digits", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert seconds < 300
    with open(out / "candidates.csv", newline="", encoding="utf-8") as file:
        rows = {row["stage"]: row for row in csv.DictReader(file)}
    accuracy = {stage: float(row["accuracy"]) for stage, row in rows.items()}
    score = {stage: float(row["score"]) for stage, row in rows.items()}
    assert list(rows) == ["float", "pruned", "quantized"]
    assert accuracy["float"] >= 0.90
    assert accuracy["pruned"] >= accuracy["float"] - 0.03
    assert accuracy["quantized"] >= accuracy["pruned"] - 0.02
    assert score["float"] > score["pruned"] > score["quantized"]
    assert (out / "pareto.png").is_file()
    for stage, row in rows.items():
        args = shlex.split(row["command"])[1:]
        scored = subprocess.run(
            [sys.executable, "-m", "micronet_score", *args, "--format", "json"],
            cwd=out, capture_output=True, text=True, check=False,
        )
        assert scored.returncode == 0, scored.stderr
        assert json.loads(scored.stdout)["score"] == pytest.approx(score[stage], rel=1e-5)


@pytest.mark.slow  # torchao's convert_pt2e alone takes about 15 s, even on the tiny model
def test_a_pt2e_stage_saves_a_program_the_scorer_reads(
    tiny_run: tuple[Path, tuple[Candidate, ...]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = tiny_run
    data = tiny_recipe(quantized={"method": "pt2e"})
    data["stages"] = data["stages"][2:]
    data["weights"] = str(out / "pruned" / "model.pt")
    _, quantized = run_recipe(parse_recipe(data, "pt2e"), tmp_path)
    assert (quantized.file, quantized.score_args) == ("quantized/model.pt2",
                                                      ("--rules", "imt-2022"))
    assert quantized.bits == "8+16"
    # The int8 constants keep the pruned zeros (half the conv and linear weights).
    assert quantized.sparsity >= 0.5
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(score_app, [quantized.file, *quantized.score_args,
                                            "--format", "json"])
    assert json.loads(result.stdout)["score"] == pytest.approx(quantized.score, rel=1e-12)


def test_a_recipe_file_is_read_as_hostile(tmp_path: Path) -> None:
    """Recipes are user files: an alias bomb or a Python tag is refused in one line, unexpanded."""
    from micronet_score.compress.recipe import RecipeError, load_recipe

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [1, 1, 1, 1]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n")
    with pytest.raises(RecipeError, match="anchors and aliases"):
        load_recipe(bomb)
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("model: !!python/name:os.system densenet121_gr4\nstages: [train]\n")
    with pytest.raises(RecipeError, match="python"):
        load_recipe(tagged)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("name: ../../escaped", "'name' must be letters"),
        ("num_workers: 100000", "'num_workers' must be from 0 to 64"),
        ("seed: 100000000000000000000000", "'seed' must be from 0 to 2**63 - 1"),
    ],
)
def test_recipe_values_that_would_escape_or_exhaust_are_refused(
    tmp_path: Path, line: str, message: str
) -> None:
    from micronet_score.compress.recipe import RecipeError, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: densenet121_gr4\ndataset: digits\n{line}\n"
                      "stages:\n  - {stage: train, epochs: 1}\n")
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(recipe)


def test_a_recipe_file_name_never_makes_an_unsafe_run_folder(tmp_path: Path) -> None:
    from micronet_score.compress.recipe import load_recipe

    odd = tmp_path / "..my recipe (v2).yaml"
    odd.write_text("model: densenet121_gr4\ndataset: digits\nstages:\n  - {stage: train}\n")
    assert load_recipe(odd).name == "my_recipe__v2_"
