"""Regenerate the model files in this folder: `python sample_models/make_samples.py`.

`densenet121_gr4_cifar.pt2` is the CIFAR DenseNet-121 with growth rate 4 (119,146 parameters),
initialised with seed 0 and *not trained*: it exists to show what the model costs, which does not
depend on its accuracy. It is saved with `torch.export`, so scoring it needs no model source.

`digits_float.pt`, `digits_pruned.pt` and `digits_quantized.pt` are the three models of the
toolkit's bundled `digits` recipe (DenseNet-121, growth rate 4, grouped bottlenecks, trained on
scikit-learn's digits), saved as state_dicts to keep them small; `README.md` is written from the
run that made them, with the accuracies measured and the scores read back from the files.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from micronet_score import load_model, score_model
from micronet_score.compress.models import create_model
from micronet_score.compress.recipe import (
    MODEL_FACTORY,
    WEIGHTS_FILE,
    Candidate,
    Recipe,
    load_recipe,
    run_recipe,
)

HERE = Path(__file__).parent
DIGITS_FILES = ("digits_float.pt", "digits_pruned.pt", "digits_quantized.pt")


def make_densenet_cifar(path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("densenet121_gr4").eval()
    program = torch.export.export(model, (torch.zeros(1, 3, 32, 32),))
    torch.export.save(program, path)


def make_digits_samples(folder: Path) -> None:
    """Run the digits recipe in a scratch folder, keep its three models, describe them."""
    recipe = load_recipe("digits")
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        candidates = run_recipe(recipe, scratch)
        seconds = time.perf_counter() - start
        for candidate, name in zip(candidates, DIGITS_FILES, strict=True):
            shutil.copyfile(Path(scratch) / candidate.stage / WEIGHTS_FILE, folder / name)
    rows = []
    for candidate, name in zip(candidates, DIGITS_FILES, strict=True):
        args = _score_args(recipe, candidate)
        scored = _score(folder / name, args)
        rows.append((candidate, name, args, scored))
    (folder / "README.md").write_text(_readme(recipe, rows, seconds), encoding="utf-8")


def _score_args(recipe: Recipe, candidate: Candidate) -> tuple[str, ...]:
    """What `micronet-score` needs besides the file: the quantized model's own arguments, and
    for the float ones the registered model (the run scored their .pt2 exports instead)."""
    if candidate.kind == "quantize":
        return candidate.score_args
    kwargs = json.dumps({"name": recipe.model, **recipe.model_args})
    return ("--arch", MODEL_FACTORY, "--arch-kwargs", kwargs, "--rules", recipe.rules)


def _score(path: Path, args: Sequence[str]) -> float:
    """The file's score as `micronet-score` computes it (same loading, same options)."""
    options = dict(zip(args[::2], args[1::2], strict=True))
    loaded = load_model(str(path), arch=options["--arch"],
                        arch_kwargs=json.loads(options["--arch-kwargs"]))
    return score_model(loaded.module, rules=options["--rules"]).score


def _readme(
    recipe: Recipe, rows: Sequence[tuple[Candidate, str, tuple[str, ...], float]], seconds: float
) -> str:
    table = [
        f"| `{name}` | {candidate.stage} | {candidate.accuracy:.2%} | {score:.5f} | "
        f"{candidate.sparsity:.1%} | {candidate.bits} | {candidate.notes or '-'} |"
        for candidate, name, _, score in rows
    ]
    commands = [shlex.join(["micronet-score", f"sample_models/{name}", *args])
                for _, name, args, _ in rows]
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    return "\n".join([
        "# Sample models",
        "",
        "Regenerate everything here with `python sample_models/make_samples.py` (this file "
        "included: it is written from the run).",
        "",
        "## `densenet121_gr4_cifar.pt2`",
        "",
        "The CIFAR DenseNet-121 with growth rate 4, initialised with seed 0 and **not trained**: "
        "it shows what the architecture costs, which does not depend on its weights. A "
        "`torch.export` program, so it scores without the model's source:",
        "",
        "```bash",
        "micronet-score sample_models/densenet121_gr4_cifar.pt2",
        "```",
        "",
        "## The digits models",
        "",
        f"Made by the toolkit's bundled `digits` recipe (`micronet-compress run digits`): "
        f"`{recipe.model}` (DenseNet-121, growth rate 4, grouped bottleneck convs) trained on "
        "scikit-learn's digits, 1797 handwritten digits of 8x8 pixels upscaled to 3x32x32, split "
        "1437 for training and 360 for testing (stratified, fixed seed). **This is not "
        "CIFAR-10**: digits is an easy data set, so these accuracies say nothing about CIFAR-10; "
        "the models exist to show what pruning and quantization do to the score on a really "
        "trained network, and to exercise the scorer's loading paths. Accuracies are top-1 on "
        f"the 360 test images. The whole run took {seconds:.0f} s on {machine}.",
        "",
        "| file | stage | test accuracy | score | sparsity | weight bits | notes |",
        "|---|---|---:|---:|---:|---|---|",
        *table,
        "",
        f"Scores are under the `{recipe.rules}` rules against their default baseline, read back "
        "from the files here exactly as the commands below compute them. Sparsity is the share "
        "of zeros among the conv and linear parameters the scorer counts; bits are the weight "
        "widths it sees (16 is the rule set's base precision for float weights).",
        "",
        "The files are state_dicts (a few hundred kB each, where a `torch.export` program of "
        "this network is 1.7 MB), so the scorer builds the model first with `--arch`. The "
        "quantized one is torch.ao FX int8 (fbgemm) with `trans3`, `dense1` and `dense2` left "
        "float: its state_dict holds the int8 weights, scales and zero points, and the factory "
        "`fx_quantized_model` rebuilds the quantized graph they load into, so no pickled code "
        "is run (a whole pickled FX module would need `--trust`). A quantize stage with "
        "`method: pt2e` writes a torch.export `.pt2` instead, which scores without `--arch`. "
        "From the repository root:",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ])


def main() -> None:
    make_densenet_cifar(HERE / "densenet121_gr4_cifar.pt2")
    make_digits_samples(HERE)


if __name__ == "__main__":
    main()
