"""The compress command line: help, one-line errors with exit code 2, a stage command run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from test_recipe import TINY, tiny_model_registered, tiny_recipe
from typer.testing import CliRunner, Result

from micronet_score import __version__
from micronet_score.compress import stages
from micronet_score.compress.cli import app
from micronet_score.compress.models import create_model
from micronet_score.compress.recipe import RecipeError
from micronet_score.compress.train import EpochMetrics, Progress, TrainConfig, TrainResult

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _tiny_model() -> Iterator[None]:
    with tiny_model_registered():
        yield

CIFAR_FILES = ("data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, "
               "test_batch, batches.meta")


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def error_line(result: Result) -> str:
    """The one line a failed command wrote, without its ``error: `` prefix."""
    stderr = result.stderr
    assert result.exit_code == 2, result.output
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: ")
    return stderr.strip().removeprefix("error: ")


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "recipes", "train", "distill", "prune", "quantize"):
        assert f"  {command} " in result.stdout


def test_version_and_help_stay_light() -> None:
    """--version answers at once, without importing torch (nor rich): a second, not ten."""
    probe = (
        "import sys\nfrom micronet_score.compress.cli import main\ncode = 0\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as done:\n    code = done.code\n"
        "heavy = sorted(m for m in ('torch', 'rich') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', heavy)\n"
    )
    for args, first in ((["--version"], f"micronet-compress {__version__}"),
                        (["--help"], "Usage: micronet-compress [OPTIONS] COMMAND [ARGS]...")):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                              text=True, timeout=60)
        lines = done.stdout.splitlines()
        assert (lines[0], lines[-1]) == (first, "EXIT 0 HEAVY []"), (args, done.stderr)
    assert "  --version  Show the version." in invoke("--help").stdout


@pytest.mark.parametrize("command", ["run", "train", "distill", "prune", "quantize", "recipes"])
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], prog_name="micronet-compress")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: micronet-compress {command} [OPTIONS]")


def test_recipes_lists_the_bundled_ones() -> None:
    result = invoke("recipes")
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["cifar10", "digits"]


def test_a_bad_recipe_key_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    data = tiny_recipe()
    data["stages"][0]["epoch"] = 3
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    message = error_line(invoke("run", str(path), "--out", str(tmp_path / "run")))
    assert message.startswith(f"{path}: stages[0] (train 'float'): unknown key 'epoch'; valid "
                              "keys: compile, cutmix_alpha, epochs, ")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args",
    [("run", "cifar10"), ("train", "--model", "densenet121_gr4")],
)
def test_missing_cifar_is_the_data_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = invoke(*args, "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert error_line(result) == (
        f"CIFAR-10 not found in {tmp_path / 'cifar-10-batches-py'} (missing {CIFAR_FILES}); "
        f"pass --download, or put the extracted cifar-10-batches-py folder in {tmp_path}"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lr", "malformed --set 'lr': expected KEY=VALUE, e.g. lr=0.01"),
        ("=3", "malformed --set '=3': expected KEY=VALUE, e.g. lr=0.01"),
        ("lrate=0.1", "micronet-compress train: stages[0] (train 'train'): unknown key 'lrate'; "
         "valid keys: compile, cutmix_alpha, epochs, label_smoothing, lr, mixup_alpha, momentum, "
         "optimizer, weight_decay"),
        ("epochs=many", "micronet-compress train: stages[0] (train 'train'): 'epochs' must be "
         "an integer, got 'many'"),
    ],
)
def test_bad_settings_are_one_line(setting: str, message: str) -> None:
    assert error_line(invoke("train", "--model", TINY, "--set", setting)) == message


def test_debug_shows_the_traceback() -> None:
    result = invoke("train", "--model", TINY, "--set", "lrate=1", "--debug")
    assert isinstance(result.exception, RecipeError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{growth_rate: 4}", "--model-args is not valid JSON (Expecting property name enclosed "
         "in double quotes): {growth_rate: 4}"),
        ("[4]", "--model-args must be a JSON object, e.g. '{\"growth_rate\": 4}'"),
        ('{"growth": 4}', "micronet-compress train: model 'densenet' cannot be built with "
         "{'growth': 4}: "),
    ],
)
def test_bad_model_args_are_one_line(text: str, message: str) -> None:
    line = error_line(invoke("train", "--model", "densenet", "--model-args", text))
    assert line.startswith(message)


def test_bad_teacher_args_are_one_line(tmp_path: Path) -> None:
    result = invoke("distill", "--model", TINY, "--teacher", "densenet", "--teacher-weights",
                    str(tmp_path / "t.pt"), "--teacher-args", "8")
    assert error_line(result) == "--teacher-args must be a JSON object, e.g. '{\"growth_rate\": 4}'"


def test_a_stage_command_reports_its_input_and_result(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(create_model(TINY).state_dict(), tmp_path / "w.pt")
    out = tmp_path / "q"
    result = invoke("quantize", "--model", "densenet", "--weights", str(tmp_path / "w.pt"),
                    "--model-args", '{"growth_rate": 2, "blocks": [1, 1, 1, 1]}',
                    "--dataset", "digits", "--batch-size", "256", "--out", str(out),
                    "--set", "skip=[linear]", "--set", "calibration_batches=1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["stage", "accuracy", "score", "sparsity", "bits", "file"]
    assert [line.split()[0] for line in lines[1:3]] == ["input", "quantize"]
    assert lines[3] == f"wrote {out / 'candidates.csv'}, {out / 'pareto.png'}, " \
                       f"{out / 'summary.md'}"
    assert (out / "quantize" / "model.pt").is_file()


def test_every_retraining_line_of_a_prune_names_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each pruning step retrains in one `train` call, stopped at the first epoch back at the
    bar; every line names the step and counts its epochs. Training is scripted (accuracies 0.2,
    0.6, 0.7 against the bar of 0.5): step 1 needs two epochs."""
    accuracies = iter([0.2, 0.6, 0.7])

    def scripted_train(model: torch.nn.Module, train_loader: object, test_loader: object,
                       cfg: TrainConfig, *, progress: Progress | None = None, label: str = "",
                       stop: Callable[[EpochMetrics], bool] | None = None) -> TrainResult:
        assert progress is not None and stop is not None
        history = []
        for epoch in range(1, cfg.epochs + 1):
            metrics = EpochMetrics(epoch, 1.5, 0.25, next(accuracies), 1000.0, cfg.lr)
            progress.start_epoch(epoch, cfg.epochs, 7, label=label)
            progress.end_epoch(metrics, label=label)
            history.append(metrics)
            if stop(metrics):
                break
        return TrainResult(tuple(history))

    monkeypatch.setattr(stages, "train", scripted_train)
    torch.manual_seed(0)
    torch.save(create_model(TINY).state_dict(), tmp_path / "w.pt")
    args = ["prune", "--model", "densenet", "--weights", str(tmp_path / "w.pt"),
            "--model-args", '{"growth_rate": 2, "blocks": [1, 1, 1, 1]}',
            "--dataset", "digits", "--batch-size", "256", "--out", str(tmp_path / "p"),
            "--set", "step=0.3", "--set", "target=0.5", "--set", "max_epochs=2",
            "--set", "min_accuracy=0.5", "--set", "max_drop=null"]
    # A narrow terminal: lines must stay whole all the same (rich wraps at the width, and at
    # 80 columns off a terminal), so that a log file has one line per event.
    result = runner.invoke(app, args, env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    # 848 weights: round(0.3 * 848) = 254 pruned (30.0%), then 170 more of 594 (50.0%).
    rest = "  loss 1.5000  train 25.00%  test {}  1,000 img/s  lr 0.001"
    assert [line for line in result.stderr.splitlines() if "loss" in line] == [
        "step 1/2 (sparsity 30.0%) epoch 1/2" + rest.format("20.00%"),
        "step 1/2 (sparsity 30.0%) epoch 2/2" + rest.format("60.00%"),
        "step 2/2 (sparsity 50.0%) epoch 1/2" + rest.format("70.00%"),
    ]
    assert "prune: 2 steps: 30.0% at 60.00%; 50.0% at 70.00%" in result.stderr.splitlines()


def test_set_values_are_read_by_the_safe_yaml_reader() -> None:
    from micronet_score.compress.cli import parse_settings
    from micronet_score.errors import UserError

    assert parse_settings(["lr=0.01", "skip=[dense1, trans3]"]) == {
        "lr": 0.01, "skip": ["dense1", "trans3"]
    }
    with pytest.raises(UserError, match="anchors and aliases"):
        parse_settings(["skip=&a [x]"])
