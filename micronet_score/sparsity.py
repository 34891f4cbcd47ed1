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
    nonzero = _zero_where_zero(tensor.detach())
    if nonzero.dim() == 0:
        nonzero = nonzero.reshape(1)
    if int(torch.count_nonzero(nonzero)) == nonzero.numel():
        return dense_stats(shape or (1,))  # the common case: one flat pass suffices
    # One pass over the data: non-zeros per kernel (or per channel for 1-D and 2-D tensors);
    # every other figure is a reduction of those few numbers.
    rows = shape[0] * shape[1] if nonzero.dim() >= 3 else nonzero.shape[0]
    grouped = nonzero.reshape(rows, -1)
    per_group = torch.count_nonzero(grouped, dim=1)
    per_channel = per_group.reshape(nonzero.shape[0], -1).sum(dim=1)
    has_kernels = nonzero.dim() >= 3
    return WeightStats(
        numel=nonzero.numel(),
        nonzero=int(per_channel.sum()),
        channels=per_channel.numel(),
        nonzero_channels=int(torch.count_nonzero(per_channel)),
        kernels=per_group.numel() if has_kernels else 0,
        nonzero_kernels=int(torch.count_nonzero(per_group)) if has_kernels else 0,
    )


def _zero_where_zero(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor that is zero exactly where a weight is zero (quantized: code == zero point)."""
    if not tensor.is_quantized:
        return tensor
    codes = tensor.int_repr().to(torch.int32)
    if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        view = [1] * tensor.dim()
        view[tensor.q_per_channel_axis()] = -1
        return codes - tensor.q_per_channel_zero_points().reshape(view).to(torch.int32)
    return codes - int(tensor.q_zero_point())


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
