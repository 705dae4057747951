"""MNIST from the official files: integrity check, in-memory tensors, splits and label subsets."""
from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from layerwise.errors import DataError  # noqa: F401 - raised here, and importable from here

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def raw_dir(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_mnist(root: Path) -> str:
    """Check the four files' MD5s; returns a fingerprint of the data (used in cache keys)."""
    folder = raw_dir(root)
    problems = []
    for name, expected in MNIST_MD5.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif (actual := _md5(path)) != expected:
            problems.append(f"{name} is corrupt (md5 {actual}, expected {expected})")
    if problems:
        raise DataError(
            f"MNIST data under {folder}: {'; '.join(problems)}. Put the four uncompressed official files "
            f"there (torchvision.datasets.MNIST layout), or point --data-root / MNIST_ROOT at the folder "
            f"that holds MNIST/raw/ (offline here: ../shared/data).")
    return hashlib.md5("".join(MNIST_MD5.values()).encode()).hexdigest()[:12]


def ensure_mnist(root: Path, allow_download: bool) -> str:
    """Verify the files, downloading them first when they are absent and downloading is allowed."""
    if allow_download and not all((raw_dir(root) / n).is_file() for n in MNIST_MD5):
        from torchvision.datasets import MNIST

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # offline machines should fail fast, not hang on a mirror
        try:
            MNIST(str(root), train=True, download=True)
        except Exception as exc:  # any network failure leaves the clear message below
            print(f"MNIST download into {root} failed: {exc}")
        finally:
            socket.setdefaulttimeout(previous)
    return verify_mnist(root)


@dataclass
class MnistTensors:
    """Pixels scaled to [0, 1], flattened to 784; labels as int64."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_index: torch.Tensor  # positions in the official 60,000, so anyone can rebuild the split
    val_index: torch.Tensor


@dataclass
class Labelled:
    """The labelled training images and the validation split that selects the epoch kept (what
    train_classifier and finetune take)."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def _images(dataset) -> torch.Tensor:
    return dataset.data.reshape(len(dataset.data), -1).float().div_(255.0)


def load_mnist(root: Path, train_size: int | None, val_size: int, split_seed: int) -> MnistTensors:
    from torchvision.datasets import MNIST

    train = MNIST(str(root), train=True, download=False)
    test = MNIST(str(root), train=False, download=False)
    x, y = _images(train), train.targets.long()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    pool = order[: train_size or len(x)]
    val_index, train_index = pool[:val_size].sort().values, pool[val_size:].sort().values
    return MnistTensors(
        x_train=x[train_index], y_train=y[train_index], x_val=x[val_index], y_val=y[val_index],
        x_test=_images(test), y_test=test.targets.long(), train_index=train_index, val_index=val_index)


def balanced_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Positions of `labels` in class-balanced round-robin order, shuffled within each class by seed.

    The first n entries are a class-balanced subset of size n (classes differ by at most one until
    a class runs out), and the subset for n is inside the one for any larger n: label sets nest.
    """
    gen = torch.Generator().manual_seed(seed)
    per_class = []
    for cls in labels.unique(sorted=True):
        members = (labels == cls).nonzero().flatten()
        per_class.append(members[torch.randperm(len(members), generator=gen)])
    rounds = max(len(m) for m in per_class)
    grid = torch.full((rounds, len(per_class)), -1, dtype=torch.long)
    for column, members in enumerate(per_class):
        grid[: len(members), column] = members
    flat = grid.flatten()
    return flat[flat >= 0]


def label_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A class-balanced, seed-deterministic subset of n positions into labels (sorted)."""
    if not 0 < n <= len(labels):
        raise ValueError(f"asked for {n} labels out of {len(labels)}")
    return balanced_order(labels, seed)[:n].sort().values
