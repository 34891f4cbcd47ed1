"""Regenerate the model files in this folder: `python sample_models/make_samples.py`.

`densenet121_gr4_cifar.pt2` is the CIFAR DenseNet-121 with growth rate 4 (119,146 parameters),
initialised with seed 0 and *not trained*: it exists to show what the model costs, which does not
depend on its accuracy. It is saved with `torch.export`, so scoring it needs no model source.
"""

from __future__ import annotations

from pathlib import Path

import torch

from micronet_score.compress.models import create_model

HERE = Path(__file__).parent


def make_densenet_cifar(path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("densenet121_gr4").eval()
    program = torch.export.export(model, (torch.zeros(1, 3, 32, 32),))
    torch.export.save(program, path)


def main() -> None:
    make_densenet_cifar(HERE / "densenet121_gr4_cifar.pt2")


if __name__ == "__main__":
    main()
