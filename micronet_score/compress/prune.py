"""Iterative global unstructured L1 magnitude pruning of every conv and linear weight.

One global threshold lets layers with many redundant weights give up more than thin ones, which
is what the challenge's parameter count rewards. Each step removes a fraction of the weights
still left, then retrains; a step whose accuracy cannot be regained is undone and pruning stops
there. Masks stay attached while pruning (so retraining cannot revive pruned weights) and are
multiplied into the weights at the end, leaving a plain model whose zeros the scorer counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.nn.utils import prune

from micronet_score.compress import distributed
from micronet_score.errors import UserError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

_CHECKPOINT_PREFIX = "prune_step_"


class PruneError(UserError):
    """Pruning cannot start: bad step or target, or a checkpoint folder from another schedule."""


@dataclass(frozen=True)
class RetrainStep:
    """The step being retrained: ``index`` (from 1) of ``steps`` in the schedule, and the
    global sparsity the pruning just reached (a fraction)."""

    index: int
    steps: int
    sparsity: float

    @property
    def label(self) -> str:
        """``"step 3/10 (sparsity 27.1%)"``: what progress and log lines during it start with."""
        return f"step {self.index}/{self.steps} (sparsity {self.sparsity:.1%})"


class Retrain(Protocol):
    """Retrains ``model`` in place after a pruning step and returns its test accuracy.

    It should stop after ``max_epochs`` epochs, or earlier once the accuracy reaches
    ``min_accuracy``, and return the accuracy of the model as it leaves it (not the best seen),
    since that state is what is kept. ``step`` says which step it is, for its progress lines.
    The toolkit's recipes use `micronet_score.compress.stages.retrainer`: one `train` call per
    step (one optimizer and learning-rate schedule over ``max_epochs``), stopped early.
    """

    def __call__(
        self, model: nn.Module, max_epochs: int, min_accuracy: float, step: RetrainStep
    ) -> float: ...


@dataclass(frozen=True)
class PruneStep:
    """One pruning step: the fraction of remaining weights removed and what it led to."""

    amount: float
    sparsity: float
    accuracy: float
    accepted: bool
    layers: Mapping[str, float]


@dataclass(frozen=True)
class PruneResult:
    """All steps tried (a rejected last one included) and the kept model's global sparsity."""

    steps: tuple[PruneStep, ...]
    sparsity: float
    reached_target: bool


def prunable_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every conv and linear layer, the form torch's pruning takes."""
    return [(module, "weight") for module in model.modules() if isinstance(module, PRUNABLE_TYPES)]


def global_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all conv and linear weights, masks (if attached) applied."""
    weights = [effective_weight(module) for module, _ in prunable_parameters(model)]
    total = sum(weight.numel() for weight in weights)
    zeros = sum(weight.numel() - int(torch.count_nonzero(weight)) for weight in weights)
    return zeros / total if total else 0.0


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zeros in each conv and linear weight, by module name, masks applied."""
    return {
        name: 1.0 - int(torch.count_nonzero(weight)) / weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES)
        for weight in [effective_weight(module)]
    }


def make_permanent(model: nn.Module) -> None:
    """Multiply every pruning mask into its parameter and drop the mask and the hook.

    Afterwards the state_dict has plain ``weight`` keys again, so a fresh model loads it with
    ``load_state_dict`` and the scorer sees the zeros in the weights themselves.
    """
    for _, module, tensor_name in _pruned_tensors(model):
        prune.remove(module, tensor_name)  # type: ignore[no-untyped-call]


def prune_schedule(
    step: float, target: float | None = None, *, steps: int | None = None
) -> tuple[float, ...]:
    """Fractions of the remaining weights to remove per step; give exactly one of:

    * ``steps``: exactly that many steps of ``step`` each, so the global sparsity ends at
      1 - (1 - step)**steps (ten steps of 0.1: 1 - 0.9**10 = 65.13%);
    * ``target``: steps of ``step`` until the sparsity reaches ``target``, the last one cut
      short so that it lands on ``target`` instead of overshooting it.

    Raises `PruneError` when ``step`` or ``target`` is outside (0, 1), ``steps`` is below 1, or
    both or neither of ``target`` and ``steps`` are given.
    """
    if (target is None) == (steps is None):
        raise PruneError("give either a target sparsity or a number of steps, not both or neither")
    if not 0.0 < step < 1.0:
        raise PruneError(f"step must lie strictly between 0 and 1, got {step}")
    if steps is not None:
        if steps < 1:
            raise PruneError(f"steps must be at least 1, got {steps}")
        return (step,) * steps
    assert target is not None
    if not 0.0 < target < 1.0:
        raise PruneError(f"target must lie strictly between 0 and 1, got {target}")
    amounts: list[float] = []
    remaining = 1.0
    # The margin absorbs float error in the product, so the cut-short step is the last one.
    while remaining > (1.0 - target) * (1.0 + 1e-9):
        amount = min(step, 1.0 - (1.0 - target) / remaining)
        amounts.append(amount)
        remaining *= 1.0 - amount
    return tuple(amounts)


def prune_iteratively(
    model: nn.Module,
    retrain: Retrain,
    *,
    step: float,
    target: float | None = None,
    steps: int | None = None,
    max_epochs: int,
    min_accuracy: float,
    checkpoint_dir: str | Path | None = None,
) -> PruneResult:
    """Prune ``model`` in place by `prune_schedule` (``step`` with ``target`` or ``steps``),
    retraining after each step.

    Each step removes the smallest-magnitude fraction of the conv and linear weights still left,
    over all layers at once: round(amount * remaining) of them (torch's global pruning count).
    A step whose retraining ends below ``min_accuracy`` is undone (weights as after the previous
    step's retraining) and pruning stops. With ``checkpoint_dir``, the model after each accepted
    step is saved there as a plain state_dict plus the steps so far (by process 0 only, under
    torchrun), and a later call with the same folder and schedule continues after the last saved
    step; the pruned weights' zeros are the masks, so resuming prunes exactly as an uninterrupted
    run would. Raises `PruneError` for a bad schedule or a folder of another schedule.
    """
    schedule = prune_schedule(step, target, steps=steps)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resumed = _resume(model, folder, schedule) if folder is not None else []
    history = list(resumed)
    _attach_masks(model)
    reached_target = True
    for index in range(len(history), len(schedule)):
        last_good = {key: value.clone() for key, value in model.state_dict().items()}
        _prune_step(model, schedule[index])
        current = RetrainStep(index + 1, len(schedule), global_sparsity(model))
        accuracy = retrain(model, max_epochs, min_accuracy, current)
        accepted = accuracy >= min_accuracy
        history.append(
            PruneStep(
                schedule[index], global_sparsity(model), accuracy, accepted, layer_sparsity(model)
            )
        )
        if not accepted:
            model.load_state_dict(last_good)
            reached_target = False
            break
        if folder is not None and distributed.current().main:
            _save_checkpoint(model, folder, schedule, history)
    make_permanent(model)
    return PruneResult(tuple(history), global_sparsity(model), reached_target)


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor as the forward pass sees it; recomputed because the attribute ``name`` is only
    refreshed by the pruning hook at the next forward, so it lags behind an optimizer step."""
    if hasattr(module, f"{name}_mask"):
        original = module.get_parameter(f"{name}_orig")
        return (original * module.get_buffer(f"{name}_mask")).detach()
    return module.get_parameter(name).detach()


def _pruned_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(module name, module, tensor name)`` for every tensor with a pruning mask attached."""
    return [
        (module_name, module, hook._tensor_name)
        for module_name, module in model.named_modules()
        for hook in list(module._forward_pre_hooks.values())
        if isinstance(hook, prune.BasePruningMethod)
    ]


def _attach_masks(model: nn.Module) -> None:
    """Mask every prunable weight where it is zero, so zeros from a checkpoint (or an earlier
    pruning) stay pruned and the state_dict keys stay the same from step to step."""
    for module, name in prunable_parameters(model):
        if not hasattr(module, f"{name}_mask"):
            mask = effective_weight(module) != 0
            prune.custom_from_mask(module, name, mask=mask)  # type: ignore[no-untyped-call]


def _prune_step(model: nn.Module, amount: float) -> None:
    """Remove ``amount`` of the still unmasked weights with the smallest magnitude, globally."""
    parameters = prunable_parameters(model)
    prune.global_unstructured(
        parameters,
        pruning_method=prune.L1Unstructured,
        importance_scores={(m, name): effective_weight(m) for m, name in parameters},
        amount=amount,
    )


def _save_checkpoint(
    model: nn.Module, folder: Path, schedule: tuple[float, ...], steps: list[PruneStep]
) -> None:
    """Save the masked weights as a plain state_dict, loadable by any fresh model (and by the
    scorer with ``--arch``, which finds it under "state_dict"), without ``weight_orig``/``_mask``
    pairs; written to a temporary name first so an interrupted save never looks complete."""
    folder.mkdir(parents=True, exist_ok=True)
    state = dict(model.state_dict())
    for module_name, module, name in _pruned_tensors(model):
        key = f"{module_name}.{name}" if module_name else name
        del state[f"{key}_orig"], state[f"{key}_mask"]
        state[key] = effective_weight(module, name)
    payload = {
        "state_dict": state,
        "schedule": list(schedule),
        "steps": [asdict(s) for s in steps],
    }
    path = folder / f"{_CHECKPOINT_PREFIX}{len(steps):03d}.pt"
    partial = path.with_suffix(".tmp")
    torch.save(payload, partial)
    partial.replace(path)


def _resume(model: nn.Module, folder: Path, schedule: tuple[float, ...]) -> list[PruneStep]:
    """Load the latest checkpoint in ``folder`` into the (unmasked) model; its steps so far."""
    paths = sorted(folder.glob(f"{_CHECKPOINT_PREFIX}*.pt"))
    if not paths:
        return []
    payload = torch.load(paths[-1], map_location="cpu", weights_only=True)
    if tuple(payload["schedule"]) != schedule:
        raise PruneError(
            f"{folder} holds checkpoints of another schedule ({len(payload['schedule'])} steps); "
            "use the same step and target (or steps) or another folder"
        )
    model.load_state_dict(payload["state_dict"])
    return [PruneStep(**fields) for fields in payload["steps"]]
