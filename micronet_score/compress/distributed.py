"""Several training processes under ``torchrun``: data-parallel training with one copy of the model
per process (PyTorch's DistributedDataParallel), one GPU each, or CPU processes over gloo.

``torchrun`` (``python -m torch.distributed.run``) starts the processes and tells each its place
through environment variables: ``RANK`` (0 .. WORLD_SIZE-1 over all machines), ``WORLD_SIZE`` and
``LOCAL_RANK`` (the process's number on its machine, which picks its GPU). Without them, or with a
world of one, everything here is a no-op and training runs as a single process.

Conventions, the same everywhere in the toolkit:

* The batch size a config or recipe gives is the global one: each of N processes trains on
  ``batch_size / N`` images per step and DistributedDataParallel averages the gradients, so one
  step sees as many images as a single process would, with the same learning rate.
* Process 0 (the "main" one) alone writes files (checkpoints, logs, results) and reports
  progress; the others compute the same things and read what it wrote.
* Accuracy is measured on a shard of the test set per process and summed, so it is the accuracy on
  the whole test set, each image counted once.
"""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from micronet_score.errors import UserError

# What torchrun sets in every process it starts.
RANK, WORLD_SIZE, LOCAL_RANK = "RANK", "WORLD_SIZE", "LOCAL_RANK"

# Process 0 may work alone for a long time while the others wait at a barrier: quantization and
# scoring run on the CPU of process 0 only. NCCL's default of 10 minutes would end the run.
TIMEOUT = timedelta(hours=6)


class DistributedError(UserError):
    """The process layout cannot work: malformed torchrun variables, or a batch size that does
    not split over the processes."""


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True in the process that writes files and reports (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The layout torchrun announced in ``environ`` (default: this process's environment); a
    world of one when ``WORLD_SIZE`` is not set. Raises `DistributedError` on values that are not
    integers or do not fit together (a rank outside 0 .. WORLD_SIZE-1)."""
    env = os.environ if environ is None else environ
    if WORLD_SIZE not in env:
        return World()
    try:
        size = int(env[WORLD_SIZE])
        rank = int(env.get(RANK, "0"))
        local = int(env.get(LOCAL_RANK, str(rank)))
    except ValueError as error:
        raise DistributedError(
            f"torchrun's variables must be integers: {WORLD_SIZE}={env.get(WORLD_SIZE)!r}, "
            f"{RANK}={env.get(RANK)!r}, {LOCAL_RANK}={env.get(LOCAL_RANK)!r}"
        ) from error
    if size < 1 or not 0 <= rank < size or local < 0:
        raise DistributedError(
            f"{RANK}={rank} does not fit {WORLD_SIZE}={size} (or {LOCAL_RANK}={local} is "
            "negative); start the processes with torchrun"
        )
    return World(rank, size, local)


def current() -> World:
    """The layout of the running process group, or a world of one when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    env = world_from_env()
    return World(dist.get_rank(), dist.get_world_size(), env.local_rank)


def process_device(name: str | None, world: World | None = None) -> torch.device:
    """The device this process trains on: ``name`` (None: CUDA when available, else the CPU),
    where under several processes any CUDA device means the process's own GPU, number
    ``LOCAL_RANK`` (one GPU per process, as torchrun's ``--nproc-per-node`` counts them)."""
    world = world_from_env() if world is None else world
    device = torch.device(name if name is not None
                          else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def ensure_process_group(device_name: str | None) -> World:
    """Join the processes torchrun started, once per process: NCCL when training on CUDA, gloo
    on the CPU. Returns the layout (a world of one, and nothing done, outside torchrun). The group
    is left at exit. A group the caller initialised itself is used as it is. Raises
    `DistributedError` when a process would have no GPU of its own."""
    if current().distributed:
        return current()
    world = world_from_env()
    if not world.distributed:
        return world
    device = process_device(device_name, world)
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if world.local_rank >= gpus:
            raise DistributedError(
                f"process {world.local_rank} of this machine has no GPU of its own ({gpus} "
                f"found); start at most {gpus} processes per machine (--nproc-per-node), or "
                "train on the CPU (--device cpu)"
            )
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    atexit.register(_leave)
    return current()


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (nothing to wait for outside a process group)."""
    if current().distributed:
        dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else itself.

    Wrapping broadcasts process 0's weights and buffers, so every process starts equal."""
    if not current().distributed:
        return model
    # Channels-last 1x1 kernels have strides that differ from their gradients' only on
    # dimensions of size 1, which DDP still reports on every backward; the layouts agree.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device] if device.type == "cuda" else None
    wrapped: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return wrapped


def sync_buffers(model: nn.Module) -> None:
    """Copy process 0's buffers (BatchNorm statistics) to every process: each process updates
    them from its own batches, so they differ after training until synchronised."""
    if current().distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def sum_over_processes(values: Sequence[float], device: torch.device) -> tuple[float, ...]:
    """Each of ``values`` summed over all processes (float64, so counts up to 2**53 stay
    exact); the values themselves outside a process group."""
    if not current().distributed:
        return tuple(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return tuple(float(value) for value in total.tolist())


class ShardSampler(Sampler[int]):
    """Every ``size``-th index from ``rank``, in order: a partition of the data set over the
    processes, each index in exactly one shard (no padding, unlike `DistributedSampler`)."""

    def __init__(self, length: int, world: World) -> None:
        self.indices = range(world.rank, length, world.size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard_train(loader: DataLoader[Any], world: World) -> DataLoader[Any]:
    """``loader`` for one of several processes: a `DistributedSampler` (shuffled when the loader
    shuffles; call ``set_epoch`` each epoch) and the batch size divided by the number of
    processes. Raises `DistributedError` when it does not divide evenly."""
    if not world.distributed or isinstance(loader.sampler, DistributedSampler):
        return loader
    batch = loader.batch_size or 1
    if batch % world.size:
        raise DistributedError(
            f"batch size {batch} does not split evenly over {world.size} processes; "
            f"use a multiple of {world.size}"
        )
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset, num_replicas=world.size, rank=world.rank,
        shuffle=isinstance(loader.sampler, RandomSampler), seed=0,
    )
    return _like(loader, sampler, batch // world.size)


def shard_test(loader: DataLoader[Any], world: World) -> DataLoader[Any]:
    """``loader`` restricted to this process's `ShardSampler` shard, batch size unchanged."""
    if not world.distributed or isinstance(loader.sampler, ShardSampler):
        return loader
    length = len(loader.dataset)  # type: ignore[arg-type]
    return _like(loader, ShardSampler(length, world), loader.batch_size or 1)


def _like(loader: DataLoader[Any], sampler: Sampler[int], batch_size: int) -> DataLoader[Any]:
    workers = loader.num_workers
    return DataLoader(
        loader.dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        persistent_workers=workers > 0,
    )


def set_epoch(loader: DataLoader[Any], epoch: int) -> None:
    """Give a `DistributedSampler` its epoch, so each epoch is shuffled anew (the same way in
    every process); nothing for other samplers, which draw from torch's generator."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch % 2**62)
