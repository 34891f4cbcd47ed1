"""Small models and data that keep the toolkit's tests to seconds on two cores."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from micronet_score.compress.data import Loader
from micronet_score.compress.models import DenseNet


def _tiny_densenet(seed: int = 0) -> DenseNet:
    torch.manual_seed(seed)
    return DenseNet((1, 1, 1, 1), growth_rate=2)


@pytest.fixture
def tiny_densenet() -> Callable[[int], DenseNet]:
    """Builds a DenseNet with one layer per stage and growth 2 (982 parameters); the same seed
    gives the same weights, as a restarted process would rebuild them."""
    return _tiny_densenet


@pytest.fixture
def synthetic_loaders() -> tuple[Loader, Loader]:
    """16 random training images in two batches of 8, labels i % 10; 6 test images."""
    generator = torch.Generator().manual_seed(1)
    train_set = TensorDataset(
        torch.randn(16, 3, 32, 32, generator=generator), torch.arange(16) % 10
    )
    test_set = TensorDataset(torch.randn(6, 3, 32, 32, generator=generator), torch.arange(6))
    return DataLoader(train_set, batch_size=8, shuffle=True), DataLoader(test_set, batch_size=8)
