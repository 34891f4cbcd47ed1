"""Global magnitude pruning: sparsity by hand, the schedule, stopping, checkpoints, resuming."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from micronet_score.compress.models import DenseNet, create_model
from micronet_score.compress.prune import (
    PruneError,
    RetrainStep,
    global_sparsity,
    layer_sparsity,
    make_permanent,
    prunable_parameters,
    prune_iteratively,
    prune_schedule,
)

MakeModel = Callable[[int], DenseNet]


class FakeRetrain:
    """Returns scripted accuracies; scales every unmasked weight by 1.5 as "training" would move
    them, and records the effective weights it leaves, so tests can tell states apart, and the
    steps it was told it retrains."""

    def __init__(self, accuracies: list[float], fail_at: int | None = None) -> None:
        self.accuracies = accuracies
        self.fail_at = fail_at
        self.calls: list[tuple[int, float]] = []
        self.left: list[dict[str, torch.Tensor]] = []
        self.steps: list[RetrainStep] = []

    def __call__(
        self, model: nn.Module, max_epochs: int, min_accuracy: float, step: RetrainStep
    ) -> float:
        if len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        self.calls.append((max_epochs, min_accuracy))
        self.steps.append(step)
        with torch.no_grad():
            for module, _ in prunable_parameters(model):
                module.get_parameter("weight_orig").mul_(1.5)
        self.left.append(_weights(model))
        return self.accuracies[len(self.calls) - 1]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Conv and linear weights as the forward pass sees them (masks applied)."""
    return {
        name: (
            module.get_parameter("weight_orig") * module.get_buffer("weight_mask")
            if hasattr(module, "weight_mask")
            else module.get_parameter("weight")
        ).detach().clone()
        for name, module in _named_prunable(model)
    }


def _named_prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    prunable = {id(module) for module, _ in prunable_parameters(model)}
    return [(name, module) for name, module in model.named_modules() if id(module) in prunable]


def _hand_model() -> nn.Sequential:
    """Linear 2x2 with 2 zeros of 4, conv 2x1x1x2 with 1 zero of 4, and a BatchNorm whose
    zero weights must not count (it is not prunable)."""
    linear, conv, norm = nn.Linear(2, 2), nn.Conv2d(1, 2, (1, 2)), nn.BatchNorm1d(3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
        conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 0.0]).reshape(2, 1, 1, 2))
        norm.weight.zero_()
    return nn.Sequential(linear, conv, norm)


def test_sparsity_functions_on_hand_built_weights() -> None:
    model = _hand_model()
    # 3 zeros of 8 conv/linear weights; per layer 2/4 and 1/4.
    assert global_sparsity(model) == 3 / 8
    assert layer_sparsity(model) == {"0": 0.5, "1": 0.25}
    # A mask over the conv's first weight (value 1.0) adds one zero: 4/8, conv 2/4.
    mask = torch.tensor([0, 1, 1, 1]).reshape(2, 1, 1, 2)
    prune.custom_from_mask(model[1], "weight", mask)  # type: ignore[no-untyped-call]
    assert global_sparsity(model) == 4 / 8
    assert layer_sparsity(model) == {"0": 0.5, "1": 0.5}
    make_permanent(model)
    assert "1.weight_orig" not in model.state_dict()
    assert model[1].get_parameter("weight").flatten().tolist() == [0.0, 2.0, 3.0, 0.0]
    assert global_sparsity(model) == 4 / 8


def test_schedule_cuts_the_last_step_to_land_on_the_target() -> None:
    amounts = prune_schedule(0.1, 0.5)
    # 0.9**6 = 0.531441 > 0.5 > 0.9**7, so six full steps and a seventh of 1 - 0.5/0.531441.
    assert amounts[:6] == (0.1,) * 6
    assert len(amounts) == 7
    assert amounts[6] == pytest.approx(1 - 0.5 / 0.531441, abs=1e-12)
    with pytest.raises(PruneError):
        prune_schedule(1.0, 0.5)


def test_a_schedule_of_n_steps_is_n_full_steps() -> None:
    assert prune_schedule(0.1, steps=10) == (0.1,) * 10
    assert prune_schedule(0.25, steps=1) == (0.25,)
    for bad in ({"target": 0.5, "steps": 3}, {}):
        with pytest.raises(PruneError, match="either a target sparsity or a number of steps"):
            prune_schedule(0.1, **bad)  # type: ignore[arg-type]
    with pytest.raises(PruneError, match="steps must be at least 1, got 0"):
        prune_schedule(0.1, steps=0)
    with pytest.raises(PruneError, match=r"step must lie strictly between 0 and 1, got 1\.0"):
        prune_schedule(1.0, steps=2)


# The prunable weights of densenet121_gr4_g2 (conv and linear weights; see test_models for the
# layer sums): stem 3*8*9 = 216; per dense layer on c channels a 1x1 c->16 in 2 groups (8c) and a
# 3x3 16->4 in 2 groups (288), over inputs summing to 3,940: 8*3,940 + 58*288 = 48,224;
# transitions 32*16 + 64*32 + 128*64 = 10,752; linear 128*10 = 1,280. N = 60,472.
G2_PRUNABLE = 216 + 48_224 + 10_752 + 1_280
# Ten steps of 10% of what is left, round(0.1 * remaining) each (Python's rounding, halves to
# even, as torch's global pruning counts): 6,047.2 -> 6,047 (54,425 left); 5,442.5 -> 5,442
# (48,983); 4,898.3 -> 4,898 (44,085); 4,408.5 -> 4,408 (39,677); 3,967.7 -> 3,968 (35,709);
# 3,570.9 -> 3,571 (32,138); 3,213.8 -> 3,214 (28,924); 2,892.4 -> 2,892 (26,032);
# 2,603.2 -> 2,603 (23,429); 2,342.9 -> 2,343 (21,086 left).
G2_ZEROS_AFTER_EACH_STEP = [6_047, 11_489, 16_387, 20_795, 24_763, 28_334, 31_548, 34_440,
                            37_043, 39_386]


def test_the_cifar_recipe_prunes_the_teams_model_in_ten_steps_to_65_1_percent() -> None:
    """The bundled recipe's prune stage on its model, with "retraining" that only moves weights:
    the exact number of zeroed weights after each step, and 1 - 0.9**10 at the end."""
    from micronet_score.compress.recipe import PruneStage, load_recipe

    recipe = load_recipe("cifar10")
    (stage,) = [s for s in recipe.stages if isinstance(s, PruneStage)]
    assert (stage.steps, stage.step, stage.target) == (10, 0.1, None)
    model = recipe.build_model()
    total = sum(module.get_parameter("weight").numel() for module, _ in prunable_parameters(model))
    assert total == G2_PRUNABLE == 60_472
    remaining, expected = total, []
    for _ in range(10):
        remaining -= round(0.1 * remaining)
        expected.append(total - remaining)
    assert expected == G2_ZEROS_AFTER_EACH_STEP
    retrain = ZerosAfterRetraining()
    result = prune_iteratively(model, retrain, step=stage.step, steps=stage.steps,
                               max_epochs=1, min_accuracy=0.0)
    assert retrain.zeros == G2_ZEROS_AFTER_EACH_STEP
    assert [step.sparsity for step in result.steps] == [z / total for z in expected]
    assert [step.amount for step in result.steps] == [0.1] * 10
    zeros = sum(int((module.get_parameter("weight") == 0).sum())
                for module, _ in prunable_parameters(model))
    assert zeros == 39_386 and result.sparsity == 39_386 / 60_472
    # 1 - 0.9**10 = 0.6513216; ten roundings move the count by at most 5 weights (8e-5).
    assert abs(result.sparsity - (1 - 0.9**10)) <= 10 / (2 * total)
    assert f"{result.sparsity:.1%}" == "65.1%"


class ZerosAfterRetraining:
    """Counts the zero weights each retraining sees, and moves the others as training would."""

    def __init__(self) -> None:
        self.zeros: list[int] = []

    def __call__(
        self, model: nn.Module, max_epochs: int, min_accuracy: float, step: RetrainStep
    ) -> float:
        weights = _weights(model)
        self.zeros.append(sum(int((w == 0).sum()) for w in weights.values()))
        with torch.no_grad():
            for module, _ in prunable_parameters(model):
                module.get_parameter("weight_orig").add_(0.01)
        return 1.0


def test_global_sparsity_after_n_steps_is_one_minus_keep_to_the_n() -> None:
    torch.manual_seed(0)
    model = create_model("densenet121_gr4")
    sizes = {name: m.get_parameter("weight").numel() for name, m in _named_prunable(model)}
    total = sum(sizes.values())
    assert total == 108_696
    retrain = FakeRetrain([1.0] * 7)
    result = prune_iteratively(
        model, retrain, step=0.1, target=0.5, max_epochs=3, min_accuracy=0.9
    )
    assert retrain.calls == [(3, 0.9)] * 7
    # Each retraining is told its step and the sparsity the pruning reached (retraining keeps
    # the masks, so that is also the step's recorded sparsity).
    assert retrain.steps == [RetrainStep(n, 7, step.sparsity)
                             for n, step in enumerate(result.steps, start=1)]
    assert retrain.steps[2].label == "step 3/7 (sparsity 27.1%)"
    # Each step prunes round(0.1 * R) of the R weights left, so R_n = 0.9**n * N + sum of n
    # rounding errors e_k (|e_k| <= 1/2), each shrunk by later steps' factor 0.9 <= 1: the count
    # is off by at most n/2 weights, the sparsity by n / (2N) = 5 / 217392 = 2.3e-5 for n = 5.
    # That is below 4e-5, the distance from 1 - 0.9**5 = 0.40951 to the next rounding boundary
    # (0.40955), so the rounded figures agree. The count itself follows the integer recurrence.
    remaining = total
    for n, step in enumerate(result.steps[:5], start=1):
        remaining -= round(0.1 * remaining)
        assert step.sparsity == (total - remaining) / total
        assert abs(step.sparsity - (1 - 0.9**n)) <= n / (2 * total)
        assert round(step.sparsity, 4) == round(1 - 0.9**n, 4)
    assert result.reached_target
    assert abs(result.sparsity - 0.5) <= 7 / (2 * total)
    # Per-layer records add up to the global figure: zeros per layer summed over all weights.
    for step in result.steps:
        zeros = sum(round(step.layers[name] * size) for name, size in sizes.items())
        assert zeros / total == step.sparsity


def test_a_step_that_cannot_regain_accuracy_is_undone(tiny_densenet: MakeModel) -> None:
    model = tiny_densenet(0)
    retrain = FakeRetrain([0.9, 0.8, 0.5])
    result = prune_iteratively(
        model, retrain, step=0.2, target=0.9, max_epochs=2, min_accuracy=0.75
    )
    assert [s.accepted for s in result.steps] == [True, True, False]
    assert not result.reached_target
    assert result.steps[2].accuracy == 0.5
    # The kept model is the one step 2's retraining left, not the one step 3 pruned.
    kept = _weights(model)
    assert kept.keys() == retrain.left[1].keys()
    assert all(torch.equal(kept[name], retrain.left[1][name]) for name in kept)
    assert result.sparsity == result.steps[1].sparsity == global_sparsity(model)
    assert not any(key.endswith(("_orig", "_mask")) for key in model.state_dict())


def test_pruned_checkpoints_reload_into_a_fresh_model(
    tiny_densenet: MakeModel, tmp_path: Path
) -> None:
    model = tiny_densenet(0)
    result = prune_iteratively(
        model, FakeRetrain([1.0] * 3), step=0.5, target=0.875, max_epochs=1, min_accuracy=0.0,
        checkpoint_dir=tmp_path,
    )
    assert [p.name for p in sorted(tmp_path.iterdir())] == [
        "prune_step_001.pt", "prune_step_002.pt", "prune_step_003.pt",
    ]
    torch.save(model.state_dict(), tmp_path / "final.pt")
    fresh = tiny_densenet(1)
    fresh.load_state_dict(torch.load(tmp_path / "final.pt", weights_only=True))
    assert global_sparsity(fresh) == result.sparsity
    step_two = torch.load(tmp_path / "prune_step_002.pt", weights_only=True)
    fresh.load_state_dict(step_two["state_dict"])
    assert global_sparsity(fresh) == result.steps[1].sparsity


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(
    tiny_densenet: MakeModel, tmp_path: Path
) -> None:
    run = functools.partial(
        prune_iteratively, step=0.3, target=0.8, max_epochs=1, min_accuracy=0.5
    )
    steps = len(prune_schedule(0.3, 0.8))
    assert steps == math.ceil(math.log(0.2) / math.log(0.7)) == 5
    reference = tiny_densenet(0)
    expected = run(reference, FakeRetrain([1.0] * steps))

    interrupted = tiny_densenet(0)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted, FakeRetrain([1.0] * steps, fail_at=2), checkpoint_dir=tmp_path)
    resumed = tiny_densenet(0)
    retrain = FakeRetrain([1.0] * steps)
    result = run(resumed, retrain, checkpoint_dir=tmp_path)
    assert [(step.index, step.steps) for step in retrain.steps] == [(3, 5), (4, 5), (5, 5)]
    assert result == expected
    reference_state = reference.state_dict()
    assert all(torch.equal(v, reference_state[k]) for k, v in resumed.state_dict().items())

    with pytest.raises(PruneError, match="another schedule"):
        run(tiny_densenet(0), retrain, step=0.4, checkpoint_dir=tmp_path)
