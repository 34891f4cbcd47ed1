"""A training run's checkpoint (``checkpoint.pt``: model, optimizer, scheduler, history, random
generators) and its per-epoch log (``metrics.jsonl``)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from micronet_score.compress.configs import TrainConfig
from micronet_score.compress.progress import EpochMetrics

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineAnnealingLR,
    history: list[EpochMetrics],
    cfg: TrainConfig,
) -> None:
    """Write the checkpoint atomically (a crash mid-write keeps the previous one), then log."""
    state = {
        "epoch": len(history),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": [asdict(metrics) for metrics in history],
        "rng": _rng_state(),
        "config": asdict(cfg),
    }
    partial = folder / (CHECKPOINT_FILE + ".partial")
    torch.save(state, partial)
    os.replace(partial, folder / CHECKPOINT_FILE)
    with open(folder / METRICS_FILE, "a", encoding="utf-8") as log:
        log.write(json.dumps(asdict(history[-1])) + "\n")


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineAnnealingLR,
) -> list[EpochMetrics]:
    """Restore everything `save_checkpoint` wrote; return the history so far."""
    # On the CPU first: the generator state must be a CPU tensor, and load_state_dict moves
    # weights and optimizer state to where the parameters already are.
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["cpu"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return [EpochMetrics(**metrics) for metrics in state["history"]]
