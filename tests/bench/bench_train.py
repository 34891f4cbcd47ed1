"""Benchmark: training images/s of a DenseNet (growth 4 by default), plain eager fp32 against the
toolkit.

Run from the repository root:

    python tests/bench/bench_train.py [--model NAME] [--device cpu|cuda] [--batch-size N]
                                      [--steps N] [--compile]

Both sides train the same freshly seeded model with SGD on the same synthetic CIFAR-shaped
batches (random images and labels; the data set does not change the arithmetic). "plain" is a
hand-written fp32 loop on contiguous tensors. "toolkit" is `train` itself, with its fast path:
channels-last memory format everywhere, bf16 autocast on CUDA (and torch.compile with
``--compile``); on the CPU it stays fp32, so the CPU ratio is channels-last's gain alone.
Each side first runs one untimed warm-up epoch (which also compiles), then one timed epoch; the
toolkit's figure is its own epoch metric, which leaves evaluation out. Nothing is asserted: it
prints a table and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from micronet_score.compress.data import Loader
from micronet_score.compress.models import create_model
from micronet_score.compress.train import TrainConfig, resolve_device, train

DEFAULT_MODEL = "densenet121_gr4"
LR = 0.05


def synthetic_loader(batches: int, batch_size: int) -> Loader:
    """``batches`` batches of random 3x32x32 images with labels i % 10, in a fixed order."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batches * batch_size, 3, 32, 32, generator=generator)
    labels = torch.arange(batches * batch_size) % 10
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def fresh_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name)


def plain_images_per_s(name: str, loader: Loader, device: torch.device) -> float:
    """An fp32 eager loop, no autocast, no channels-last: the second of two epochs, timed."""
    model = fresh_model(name).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)

    def epoch() -> float:
        start = time.perf_counter()
        for images, labels in loader:
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
        _synchronize(device)
        return len(loader.dataset) / (time.perf_counter() - start)  # type: ignore[arg-type]

    epoch()
    return epoch()


def toolkit_images_per_s(
    name: str, loader: Loader, device: torch.device, compile_model: bool
) -> float:
    """`train` for two epochs; its second epoch's images/s (the first one warms up)."""
    test_loader = DataLoader(TensorDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2).long()))
    config = TrainConfig(epochs=2, lr=LR, device=str(device), compile=compile_model)
    return train(fresh_model(name), loader, test_loader, config).history[-1].images_per_s


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"[default: {DEFAULT_MODEL}]")
    parser.add_argument("--device", default=None, help="cpu or cuda [default: cuda if any]")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="[default: 256 on CUDA, 64 on the CPU]")
    parser.add_argument("--steps", type=int, default=None,
                        help="batches per epoch [default: 50 on CUDA, 10 on the CPU]")
    parser.add_argument("--compile", action="store_true", help="torch.compile the toolkit side")
    args = parser.parse_args()
    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    batch_size = args.batch_size or (256 if on_cuda else 64)
    loader = synthetic_loader(args.steps or (50 if on_cuda else 10), batch_size)
    fast_path = "bf16 autocast + channels-last" if on_cuda else "fp32, channels-last"
    if args.compile:
        fast_path += " + torch.compile"
    rows: list[tuple[str, str, Callable[[], float]]] = [
        ("plain", "eager fp32, contiguous", lambda: plain_images_per_s(args.model, loader, device)),
        ("toolkit", f"train(): {fast_path}",
         lambda: toolkit_images_per_s(args.model, loader, device, args.compile)),
    ]
    where = torch.cuda.get_device_name(device) if on_cuda else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{args.model}, batch {batch_size}, {len(loader)} steps per epoch, on {where}, "
          f"torch {torch.__version__}")
    results = {}
    for name, description, measure in rows:
        results[name] = measure()
        print(f"  {name:8} {description:48} {results[name]:10,.0f} images/s")
    print(f"ratio toolkit / plain: {results['toolkit'] / results['plain']:.2f}x")


if __name__ == "__main__":
    main()
