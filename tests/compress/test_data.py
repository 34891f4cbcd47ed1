"""CIFAR-10 through torchvision's real reader (on a generated fixture) and the digits split."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from micronet_score.compress.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataError,
    DataNotFoundError,
    load_digits_split,
    make_loaders,
    write_cifar_fixture,
)
from micronet_score.errors import UserError


def test_fixture_is_in_the_release_format(tmp_path: Path) -> None:
    folder = write_cifar_fixture(tmp_path, n_train=12, n_test=5)
    assert folder == tmp_path / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
        "data_batch_5", "test_batch",
    ]
    # 12 images over five batches: 3, 3, 2, 2, 2.
    sizes = []
    for number in range(1, 6):
        with open(folder / f"data_batch_{number}", "rb") as file:
            batch = pickle.load(file)
        assert batch["data"].dtype == np.uint8
        assert batch["data"].shape[1] == 3072
        sizes.append(len(batch["labels"]))
    assert sizes == [3, 3, 2, 2, 2]
    assert batch["labels"] == [0, 1]  # images 10 and 11


def test_cifar_loaders_read_the_fixture(tmp_path: Path) -> None:
    folder = write_cifar_fixture(tmp_path, n_train=12, n_test=5)
    train_loader, test_loader = make_loaders("cifar10", tmp_path, 4, verify_checksums=False)
    assert len(train_loader.dataset) == 12  # type: ignore[arg-type]
    train_labels = torch.cat([labels for _, labels in train_loader])
    assert sorted(train_labels.tolist()) == sorted(i % 10 for i in range(12))

    # The test split is not augmented: pixels are x/255 normalised with CIFAR's statistics.
    with open(folder / "test_batch", "rb") as file:
        raw = pickle.load(file)
    expected = torch.from_numpy(raw["data"]).float().reshape(5, 3, 32, 32) / 255
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    images, labels = zip(*test_loader, strict=True)
    torch.testing.assert_close(torch.cat(images), (expected - mean) / std)
    assert torch.cat(labels).tolist() == [0, 1, 2, 3, 4]
    assert images[0].shape == (4, 3, 32, 32)


def test_missing_cifar_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as caught:
        make_loaders("cifar10", tmp_path, 4)
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value, UserError)
    message = str(caught.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "--download" in message


def test_partly_missing_cifar_names_the_files(tmp_path: Path) -> None:
    folder = write_cifar_fixture(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match=r"\(missing test_batch\)"):
        make_loaders("cifar10", tmp_path, 4, verify_checksums=False)


def test_checksums_are_verified_by_default(tmp_path: Path) -> None:
    folder = write_cifar_fixture(tmp_path)
    for download in (False, True):  # files a user put there are never replaced
        with pytest.raises(DataError) as caught:
            make_loaders("cifar10", tmp_path, 4, download=download)
        assert not isinstance(caught.value, FileNotFoundError)
        assert str(caught.value) == (
            f"{folder / 'data_batch_1'} is not the official CIFAR-10 release's (its MD5 checksum "
            "differs); to use your own copy in the same format, set 'verify_checksums: false' "
            f"in the recipe, or delete {folder} and pass --download for the official files")


def test_unknown_data_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data set 'mnist'; choose one of: cifar10, digits"):
        make_loaders("mnist", tmp_path, 4)


def test_digits_split() -> None:
    train, test = load_digits_split()
    # sklearn rounds the test share up: ceil(0.2 * 1797) = 360.
    assert (len(train), len(test)) == (1797 - 360, 360)
    images, labels = train.tensors
    assert images.shape == (1437, 3, 32, 32)
    assert labels.dtype == torch.int64
    assert torch.equal(images[:, 0], images[:, 1])
    assert torch.equal(images[:, 0], images[:, 2])
    # Normalised with the training split's own statistics.
    assert images.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert images.std().item() == pytest.approx(1.0, abs=1e-5)
    # Stratified: every class keeps its share of the test split to within one image.
    totals = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(test.tensors[1].numpy(), minlength=10)
    assert all(abs(n - 0.2 * t) < 1 for n, t in zip(test_counts, totals, strict=True))


def test_digits_split_is_deterministic() -> None:
    first, second = load_digits_split(), load_digits_split()
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a.tensors, b.tensors, strict=True):
            assert torch.equal(x, y)


def test_digits_loaders(tmp_path: Path) -> None:
    train_loader, test_loader = make_loaders("digits", tmp_path, 64)
    assert (len(train_loader), len(test_loader)) == (math.ceil(1437 / 64), math.ceil(360 / 64))
    images, labels = next(iter(test_loader))
    assert images.shape == (64, 3, 32, 32)
    assert torch.equal(labels, load_digits_split()[1].tensors[1][:64])
