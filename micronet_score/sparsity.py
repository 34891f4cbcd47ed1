"""Zero statistics of stored tensors and the cheapest way to store them.

Each tensor is scanned once, with vectorized reductions; everything the formulas need (non-zeros in
total, per output channel, per kernel) is reduced to a few integers so that no per-element work
happens in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from micronet_score.rules import STORAGE_FORMATS


@dataclass(frozen=True)
class WeightStats:
    """Zero structure of one stored tensor; dim 0 is the output channel (filter).

    `known` is False for tensors without data (meta device): they are then counted as dense.
    """

    numel: int
    nonzero: int
    channels: int
    nonzero_channels: int
    kernels: int
    nonzero_kernels: int
    known: bool = True

    @property
    def zeros(self) -> int:
        return self.numel - self.nonzero

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


def dense_stats(shape: tuple[int, ...], known: bool = True) -> WeightStats:
    """Stats of a tensor with no zeros (or whose zeros we cannot see)."""
    numel = 1
    for dim in shape:
        numel *= dim
    channels = shape[0] if shape else 1
    kernels = channels * shape[1] if len(shape) >= 3 else 0
    return WeightStats(numel, numel, channels, channels, kernels, kernels, known)


def tensor_stats(tensor: torch.Tensor) -> WeightStats:
    """Measure zeros on the real values; quantized tensors are read as their integer codes."""
    shape = tuple(int(d) for d in tensor.shape)
    if tensor.device.type == "meta":
        return dense_stats(shape, known=False)
    nonzero_mask = _nonzero_mask(tensor.detach())
    if nonzero_mask.dim() == 0:
        nonzero_mask = nonzero_mask.reshape(1)
    per_channel = nonzero_mask.reshape(nonzero_mask.shape[0], -1)
    nonzero_kernels = 0
    kernels = 0
    if nonzero_mask.dim() >= 3:
        per_kernel = nonzero_mask.reshape(shape[0] * shape[1], -1).any(dim=1)
        kernels = per_kernel.numel()
        nonzero_kernels = int(per_kernel.sum())
    return WeightStats(
        numel=nonzero_mask.numel(),
        nonzero=int(per_channel.sum()),
        channels=per_channel.shape[0],
        nonzero_channels=int(per_channel.any(dim=1).sum()),
        kernels=kernels,
        nonzero_kernels=nonzero_kernels,
    )


def _nonzero_mask(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_quantized:
        if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            zero_points = tensor.q_per_channel_zero_points()
            axis = tensor.q_per_channel_axis()
            view = [1] * tensor.dim()
            view[axis] = -1
            return tensor.int_repr() != zero_points.reshape(view)
        return tensor.int_repr() != tensor.q_zero_point()
    return tensor != 0


@dataclass(frozen=True)
class StorageChoice:
    format: str
    bits: float
    mask_bits: int


def cheapest_storage(
    stats: WeightStats, value_bits: float, formats: tuple[str, ...]
) -> StorageChoice:
    """Bits needed by each allowed format; the cheapest wins (dense on ties: it is simplest)."""
    options: dict[str, tuple[float, int]] = {"dense": (stats.numel * value_bits, 0)}
    if "sparse" in formats and stats.known:
        options["sparse"] = (stats.nonzero * value_bits + stats.numel, stats.numel)
    if "kernel_mask" in formats and stats.kernels and stats.known:
        kernel_size = stats.numel // stats.kernels
        kept = stats.nonzero_kernels * kernel_size * value_bits
        options["kernel_mask"] = (kept + stats.kernels, stats.kernels)
    if "filter_mask" in formats and stats.channels > 1 and stats.known:
        filter_size = stats.numel // stats.channels
        kept = stats.nonzero_channels * filter_size * value_bits
        options["filter_mask"] = (kept + stats.channels, stats.channels)
    best = min(STORAGE_FORMATS, key=lambda f: options.get(f, (float("inf"), 0))[0])
    bits, mask = options[best]
    return StorageChoice(best, bits, mask)
