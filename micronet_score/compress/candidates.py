"""What a run reports: one `Candidate` per stage's model, measured and scored, and the files
over all of them: ``candidates.csv``, ``pareto.png`` and ``summary.md``.

The sparsity of a candidate is that of its conv and linear weights alone, the weights pruning
removes (as the MicroNet course reports it), measured on the model the scorer reads: biases,
folded BatchNorm shifts and quantization scales are not weights and are left out.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized import Linear as QuantizedLinear
from torch.ao.nn.quantized.modules.conv import _ConvNd as QuantizedConv

from micronet_score.compress.prune import PRUNABLE_TYPES, effective_weight
from micronet_score.compress.spec import ACCURACY_BAR, SCORE_BAR, Recipe
from micronet_score.results import Report
from micronet_score.rules import load_rules

RESULT_FILE = "result.json"
CANDIDATES_FILE = "candidates.csv"
PARETO_FILE = "pareto.png"
SUMMARY_FILE = "summary.md"

CSV_COLUMNS = ("stage", "kind", "accuracy", "params", "ops", "score", "sparsity", "bits",
               "seconds", "command")

# Graph calls whose second argument is a conv or linear weight (PT2E programs' form).
_WEIGHTED_CALLS = frozenset({
    torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.conv3d.default,
    torch.ops.aten.convolution.default, torch.ops.aten.linear.default,
})


@dataclass(frozen=True)
class Candidate:
    """One model the run produced, as measured and scored. ``file`` is relative to the run
    folder; ``score_args`` are what ``micronet-score`` needs besides it; ``sparsity`` is the
    fraction of zeros among its conv and linear weights (see `weight_sparsity`)."""

    stage: str
    kind: str
    accuracy: float
    params: float
    ops: float
    score: float
    sparsity: float
    bits: str
    file: str
    score_args: tuple[str, ...]
    seconds: float
    notes: str

    @property
    def command(self) -> str:
        """The scorer command for this candidate, run from the run folder."""
        return " ".join(["micronet-score", self.file, *(_quote(arg) for arg in self.score_args)])


def measured(
    stage: str, kind: str, accuracy: float, report: Report, model: nn.Module, file: str,
    score_args: tuple[str, ...], notes: str,
) -> Candidate:
    """A candidate from its accuracy, its score ``report`` and the ``model`` the report is of
    (for the sparsity); bits are the weight widths of its conv and linear layers."""
    weighted = [layer for layer in report.layers if layer.op in ("conv", "linear")]
    widths = sorted({layer.weight_bits for layer in weighted if layer.weight_bits is not None})
    return Candidate(
        stage=stage, kind=kind, accuracy=accuracy, params=report.params, ops=report.ops,
        score=report.score, sparsity=weight_sparsity(model),
        bits="+".join(str(width) for width in widths), file=file, score_args=score_args,
        seconds=0.0, notes=notes,
    )


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all conv and linear weights of ``model``, biases excluded.

    Reads float layers (pruning masks applied), torch.ao's quantized conv and linear modules
    (FX-quantized models; a weight is zero when its integer equals the zero point) and, in a
    graph module such as a PT2E program's ``module()``, conv and linear calls whose weight is a
    constant (int8 constants dequantized). 0.0 when there are no such weights.
    """
    zeros = total = 0
    for weight in _weights(model):
        total += weight.numel()
        zeros += weight.numel() - int(torch.count_nonzero(weight))
    return zeros / total if total else 0.0


def _weights(model: nn.Module) -> Iterator[torch.Tensor]:
    for module in model.modules():
        if isinstance(module, PRUNABLE_TYPES):
            yield effective_weight(module)
        elif isinstance(module, QuantizedConv | QuantizedLinear):
            yield module.weight().dequantize()  # type: ignore[operator]
    if isinstance(model, torch.fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "call_function" and node.target in _WEIGHTED_CALLS:
                weight = _constant(model, node.args[1])
                if weight is not None:
                    yield weight


def _constant(module: torch.fx.GraphModule, arg: Any) -> torch.Tensor | None:
    """The value of a graph argument computed from stored tensors alone (an int8 constant and
    its dequantization), or None when it depends on an input."""
    if not isinstance(arg, torch.fx.Node):
        return arg if isinstance(arg, torch.Tensor) else None
    if arg.op == "get_attr":
        value = module
        for part in str(arg.target).split("."):
            value = getattr(value, part)
        return value.detach() if isinstance(value, torch.Tensor) else None
    if arg.op != "call_function":
        return None
    args = [_constant(module, a) if isinstance(a, torch.fx.Node) else a for a in arg.args]
    if any(a is None for a in args) or arg.kwargs:
        return None
    with torch.no_grad():
        value = arg.target(*args)  # type: ignore[operator]
    return value if isinstance(value, torch.Tensor) else None


def read_candidate(path: Path) -> Candidate:
    """A candidate from the ``result.json`` a stage wrote (`dataclasses.asdict` of it)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return Candidate(**{**data, "score_args": tuple(data["score_args"])})


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(char in arg for char in " \"{}[]") else arg


def write_reports(out: Path, recipe: Recipe, candidates: Sequence[Candidate]) -> None:
    """``candidates.csv``, ``pareto.png`` and ``summary.md`` for the candidates so far."""
    with open(out / CANDIDATES_FILE, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for c in candidates:
            writer.writerow([c.stage, c.kind, f"{c.accuracy:.4f}", f"{c.params:.1f}",
                             f"{c.ops:.1f}", f"{c.score:.6g}", f"{c.sparsity:.4f}", c.bits,
                             f"{c.seconds:.1f}", c.command])
    from micronet_score.compress.plot import plot_pareto  # matplotlib only when plotting

    plot_pareto(candidates, out / PARETO_FILE, title=f"{recipe.name}: {recipe.model}",
                accuracy_bar=ACCURACY_BAR, score_bar=SCORE_BAR)
    (out / SUMMARY_FILE).write_text(summary(recipe, candidates), encoding="utf-8")


def summary(recipe: Recipe, candidates: Sequence[Candidate]) -> str:
    """The run in Markdown: the candidates, the best one over the bar, notes, scorer commands."""
    baseline = recipe.baseline or load_rules(recipe.rules).default_baseline
    lines = [
        f"# {recipe.name}: {recipe.model} on {recipe.dataset}",
        "",
        f"Scored under the `{recipe.rules}` rules against the `{baseline}` baseline "
        "(lower is better).",
        "",
        "| stage | kind | accuracy | score | params | ops | sparsity | bits | time |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    lines += [
        f"| {c.stage} | {c.kind} | {c.accuracy:.2%} | {c.score:.5g} | {c.params:,.0f} | "
        f"{c.ops:,.0f} | {c.sparsity:.1%} | {c.bits} | {c.seconds:.0f} s |"
        for c in candidates
    ]
    passing = [c for c in candidates if c.accuracy >= ACCURACY_BAR]
    best = min(passing, key=lambda c: c.score, default=None)
    lines += ["", f"Lowest score at {ACCURACY_BAR:.0%} accuracy or more: " + (
        f"**{best.stage}**, {best.score:.5g} at {best.accuracy:.2%}." if best else "none.")]
    notes = [f"- {c.stage}: {c.notes}" for c in candidates if c.notes]
    if notes:
        lines += ["", "## Notes", "", *notes]
    lines += ["", "## Scoring the saved models", "", "From this folder:", "", "```bash",
              *(c.command for c in candidates), "```", ""]
    return "\n".join(lines)
