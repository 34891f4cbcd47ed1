"""Data for the compression toolkit: CIFAR-10 from disk, and scikit-learn's digits offline.

Digits (1797 8x8 images bundled with scikit-learn) is upscaled to CIFAR's 3x32x32 so every
CIFAR model runs on it unchanged: a real data set for checks on machines without CIFAR-10.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import v2

from micronet_score.errors import UserError

# Items are (image, label) pairs; collated batches are (float images, int64 labels) tensors.
Loader: TypeAlias = DataLoader[Any]

DATASETS = ("cifar10", "digits")

# Per-channel statistics of the CIFAR-10 training set (the often quoted 0.2023/0.1994/0.2010
# are per-image standard deviations averaged, not the data set's).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2


class DataError(UserError):
    """A data set cannot be loaded; the message says what to do about it."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data set's files are not where they were looked for."""


class _UnverifiedCIFAR10(CIFAR10):  # type: ignore[misc]  # torchvision ships no type hints
    """torchvision's CIFAR-10 reader with existence-only file checks.

    torchvision compares each file's md5 with the official release's on every read, which one's
    own copy or a generated fixture cannot match; `check_cifar10` does that check once when it is
    wanted, and giving the reader ``None`` checksums keeps every other step of it.
    """

    train_list: ClassVar[list[list[str | None]]] = [[n, None] for n, _ in CIFAR10.train_list]
    test_list: ClassVar[list[list[str | None]]] = [[n, None] for n, _ in CIFAR10.test_list]
    meta: ClassVar[dict[str, str | None]] = {**CIFAR10.meta, "md5": None}


def _cifar_files() -> list[tuple[str, str]]:
    """(file name, MD5 of the official release) for every file the reader needs."""
    listed = [(name, md5) for name, md5 in CIFAR10.train_list + CIFAR10.test_list]
    return [*listed, (CIFAR10.meta["filename"], CIFAR10.meta["md5"])]


def check_cifar10(root: Path, *, download: bool, verify_checksums: bool) -> None:
    """Raise unless ``root`` holds a readable CIFAR-10 folder (or ``download`` may fetch it).

    Missing files are a `DataNotFoundError` naming them (unless ``download``). With
    ``verify_checksums``, each present file's MD5 is compared with the official release's and
    the first that differs is a `DataError` saying how to use one's own copy instead
    (``verify_checksums: false`` in the recipe), whether or not ``download`` is set: files a
    user put there are never replaced.
    """
    folder = root / CIFAR10.base_folder
    missing = [name for name, _ in _cifar_files() if not (folder / name).is_file()]
    if missing and not download:
        raise DataNotFoundError(
            f"CIFAR-10 not found in {folder} (missing {', '.join(missing)}); pass --download, "
            f"or put the extracted {CIFAR10.base_folder} folder in {root}"
        )
    if not verify_checksums:
        return
    for name, md5 in _cifar_files():
        path = folder / name
        if path.is_file() and not check_integrity(str(path), md5):
            raise DataError(
                f"{path} is not the official CIFAR-10 release's (its MD5 checksum differs); "
                "to use your own copy in the same format, set 'verify_checksums: false' in "
                f"the recipe, or delete {folder} and pass --download for the official files"
            )


def _cifar10(root: Path, *, train: bool, download: bool) -> Dataset[Any]:
    """One split, read by torchvision's reader once `check_cifar10` has passed (or is to be
    downloaded: then torchvision fetches the release and checks its archive's checksum)."""
    augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train else []
    transform = v2.Compose(
        [
            *augment,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    complete = all((root / CIFAR10.base_folder / name).is_file() for name, _ in _cifar_files())
    reader = _UnverifiedCIFAR10 if complete else CIFAR10
    try:
        dataset: Dataset[Any] = reader(
            root=str(root), train=train, transform=transform, download=download and not complete
        )
    except RuntimeError as error:  # torchvision's answer to a failed download check
        raise DataError(
            f"CIFAR-10 in {root / CIFAR10.base_folder} could not be read ({error}); "
            "delete the folder and pass --download"
        ) from error
    return dataset


def load_digits_split() -> tuple[TensorDataset, TensorDataset]:
    """Digits as (train, test) of 3x32x32 float images and int64 labels.

    The split is stratified, 80/20, with a fixed seed, so accuracies are comparable across runs
    (1437 train, 360 test images). Images are scaled to [0, 1], upscaled bilinearly, copied to
    three channels and normalised with the training split's own mean and standard deviation.
    """
    # Imported here: scikit-learn is an optional dependency that only digits needs.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1)
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SEED,
        stratify=digits.target,
    )
    train_idx_t, test_idx_t = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    mean = images[train_idx_t].mean()
    std = images[train_idx_t].std()
    normalised = (images - mean) / std
    return (
        TensorDataset(normalised[train_idx_t].contiguous(), labels[train_idx_t]),
        TensorDataset(normalised[test_idx_t].contiguous(), labels[test_idx_t]),
    )


def make_loaders(
    dataset: str,
    data_dir: str | Path,
    batch_size: int,
    *,
    download: bool = False,
    num_workers: int = 0,
    verify_checksums: bool = True,
    test_batch_size: int | None = None,
) -> tuple[Loader, Loader]:
    """Shuffled train and ordered test loaders for ``dataset`` (one of `DATASETS`).

    ``data_dir`` is where CIFAR-10's ``cifar-10-batches-py`` folder lives; digits ignores it.
    Shuffling draws from torch's global generator, so a training loop that saves and restores
    that generator resumes with the same batch order. ``verify_checksums=False`` reads a
    CIFAR-10 folder whose files are in the official format but not byte-identical to the
    official release (one's own copy, or a fixture from `write_cifar_fixture`). Raises
    `DataNotFoundError` for missing files and `DataError` for any other unreadable data set.
    """
    train_set: Dataset[Any]
    test_set: Dataset[Any]
    if dataset == "cifar10":
        root = Path(data_dir)
        check_cifar10(root, download=download, verify_checksums=verify_checksums)
        train_set, test_set = (
            _cifar10(root, train=split, download=download) for split in (True, False)
        )
    elif dataset == "digits":
        train_set, test_set = load_digits_split()
    else:
        raise DataError(f"unknown data set {dataset!r}; choose one of: {', '.join(DATASETS)}")
    return (
        _loader(train_set, batch_size, shuffle=True, num_workers=num_workers),
        _loader(test_set, test_batch_size or batch_size, shuffle=False, num_workers=num_workers),
    )


def _loader(
    data: Dataset[Any], batch_size: int, *, shuffle: bool, num_workers: int
) -> Loader:
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def write_cifar_fixture(
    root: str | Path, n_train: int = 50, n_test: int = 10, seed: int = 0
) -> Path:
    """Write a tiny data set in CIFAR-10's on-disk format under ``root``; return its folder.

    Files, keys and dtypes are those of the official python release (five training batches,
    ``test_batch``, ``batches.meta``), with random uint8 pixels and label ``i % 10`` for the
    i-th image of each split, so tests know every label.
    Only the bytes differ, so read it with ``verify_checksums=False``.
    """
    folder: Path = Path(root) / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chunks = np.array_split(np.arange(n_train) % 10, len(CIFAR10.train_list))
    for number, ((name, _), labels) in enumerate(zip(CIFAR10.train_list, chunks, strict=True)):
        _write_batch(folder / name, f"training batch {number + 1} of 5", labels, rng)
    _write_batch(folder / "test_batch", "testing batch 1 of 1", np.arange(n_test) % 10, rng)
    meta = {"num_cases_per_batch": 10000, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    with open(folder / CIFAR10.meta["filename"], "wb") as file:
        pickle.dump(meta, file)
    return folder


def _write_batch(path: Path, label: str, labels: np.ndarray, rng: np.random.Generator) -> None:
    batch = {
        "batch_label": label,
        "labels": [int(value) for value in labels],
        "data": rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8),
        "filenames": [f"fixture_{index}.png" for index in range(len(labels))],
    }
    with open(path, "wb") as file:
        pickle.dump(batch, file)
