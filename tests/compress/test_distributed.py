"""Several processes under torchrun: the layout read from its variables, the data split over the
processes, and a real two-process run on the CPU (gloo) whose files load and score."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from typer.testing import CliRunner

from micronet_score.cli import score_app
from micronet_score.compress.data import make_loaders
from micronet_score.compress.distributed import (
    DistributedError,
    ShardSampler,
    World,
    ensure_process_group,
    process_device,
    shard_test,
    shard_train,
    world_from_env,
)
from micronet_score.compress.models import DenseNet
from micronet_score.compress.train import evaluate


def test_the_layout_comes_from_torchruns_variables() -> None:
    assert world_from_env({}) == World(0, 1, 0)
    world = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert world == World(3, 4, 1)
    assert (world.main, world.distributed) == (False, True)
    assert world_from_env({"WORLD_SIZE": "1"}) == World(0, 1, 0)
    with pytest.raises(DistributedError, match="must be integers"):
        world_from_env({"WORLD_SIZE": "two", "RANK": "0"})
    with pytest.raises(DistributedError, match="RANK=2 does not fit WORLD_SIZE=2"):
        world_from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_each_process_trains_on_its_own_gpu() -> None:
    second = World(1, 2, 1)
    assert process_device("cuda", second) == torch.device("cuda", 1)
    assert process_device("cuda:0", second) == torch.device("cuda", 1)
    assert process_device("cpu", second) == torch.device("cpu")
    assert process_device("cuda:1", World()) == torch.device("cuda", 1)


def test_a_process_without_a_gpu_of_its_own_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DistributedError, match=r"process 1 of this machine has no GPU of its "
                       r"own \(1 found\); start at most 1 processes per machine"):
        ensure_process_group(None)


def test_the_test_set_is_split_into_disjoint_shards() -> None:
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=4)
    shards = [[int(i) for (batch,) in shard_test(loader, World(rank, 3, rank)) for i in batch]
              for rank in range(3)]
    # Every third image from the rank on, none twice, none padded.
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert len(ShardSampler(10, World(1, 3, 1))) == 3
    assert shard_test(loader, World()) is loader


def test_the_batch_size_is_the_global_one() -> None:
    loader = DataLoader(TensorDataset(torch.arange(20)), batch_size=8, shuffle=True)
    halves = [shard_train(loader, World(rank, 2, rank)) for rank in range(2)]
    for rank, half in enumerate(halves):
        assert half.batch_size == 4
        assert isinstance(half.sampler, DistributedSampler)
        assert (half.sampler.rank, half.sampler.num_replicas, half.sampler.shuffle) == (
            rank, 2, True)
    # Over one epoch the two halves together see every image once (20 split evenly).
    seen = sorted(int(i) for half in halves for (batch,) in half for i in batch)
    assert seen == list(range(20))
    with pytest.raises(DistributedError, match="batch size 8 does not split evenly over 3 "
                       "processes; use a multiple of 3"):
        shard_train(loader, World(0, 3, 0))


def test_one_process_evaluates_the_whole_test_set() -> None:
    # The "images" are the logits: predictions 0, 1, 2, 0 against labels 0, 1, 0, 0.
    logits = torch.eye(3)[[0, 1, 2, 0]]
    loader = DataLoader(TensorDataset(logits, torch.tensor([0, 1, 0, 0])), batch_size=3)
    assert evaluate(torch.nn.Flatten(), loader, "cpu", world=World()) == 0.75


def _tiny() -> DenseNet:
    return DenseNet((1, 1, 1, 1), growth_rate=2)


# Digits split 1,437 / 360; batch 256 is 128 per process.
TORCHRUN_RECIPE = {
    "model": "densenet", "model_args": {"growth_rate": 2, "blocks": [1, 1, 1, 1]},
    "dataset": "digits", "batch_size": 256, "seed": 0, "rules": "imt-2022",
    "stages": [
        {"stage": "train", "name": "float", "epochs": 1, "lr": 0.05},
        {"stage": "distill", "name": "distilled", "epochs": 1, "lr": 0.05},
    ],
}


@pytest.fixture(scope="module")
def torchrun_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-process run of a train stage and a distill stage, one epoch each, on the CPU."""
    folder = tmp_path_factory.mktemp("torchrun")
    torch.manual_seed(1)
    torch.save(_tiny().state_dict(), folder / "teacher.pt")
    recipe = json.loads(json.dumps(TORCHRUN_RECIPE))
    recipe["stages"][1]["teacher"] = {"model": "densenet", "weights": str(folder / "teacher.pt"),
                                      "model_args": recipe["model_args"]}
    # JSON is YAML, and writes shared values out in full (no anchors, which recipes refuse).
    (folder / "recipe.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "micronet_score.compress", "run", str(folder / "recipe.yaml"),
         "--out", str(folder / "run"), "--device", "cpu"],
        capture_output=True, text=True, check=False, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "run"


def test_a_torchrun_run_writes_one_set_of_files(torchrun_out: Path) -> None:
    for stage in ("float", "distilled"):
        # One metrics line per epoch: only process 0 writes.
        lines = (torchrun_out / stage / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["epoch"] == 1
        assert not list((torchrun_out / stage).glob("*.partial"))
    with open(torchrun_out / "candidates.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["stage"] for row in rows] == ["float", "distilled"]


@pytest.mark.parametrize("stage", ["float", "distilled"])
def test_the_checkpoint_loads_and_the_saved_model_scores(
    torchrun_out: Path, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = torch.load(torchrun_out / stage / "checkpoint.pt", weights_only=True)
    model = _tiny()
    model.load_state_dict(checkpoint["model"])
    saved = torch.load(torchrun_out / stage / "model.pt", weights_only=True)
    assert all(torch.equal(saved[key], value) for key, value in model.state_dict().items())
    result = json.loads((torchrun_out / stage / "result.json").read_text())
    # The accuracy the two processes measured on their halves of the test set is the saved
    # model's on the whole of it, measured here in one process.
    _, test_loader = make_loaders("digits", "unused", 256)
    assert evaluate(model, test_loader, "cpu") == result["accuracy"]
    monkeypatch.chdir(torchrun_out)
    args = shlex.split(f"micronet-score {result['file']} {shlex.join(result['score_args'])}")
    scored = CliRunner().invoke(score_app, [*args[1:], "--format", "json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["score"] == pytest.approx(result["score"], rel=1e-12)
