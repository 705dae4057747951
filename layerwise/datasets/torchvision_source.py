"""source: torchvision — a torchvision classification dataset by name, read from (or downloaded
into) the data root. Each entry says how the dataset is constructed for its parts and how its
images are laid out, since torchvision's datasets keep them in different shapes and types."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from layerwise.datasets.source import UNLABELLED, Part, SourceData, tensor_digest
from layerwise.errors import DataError


@dataclass(frozen=True)
class Recipe:
    train: dict
    test: dict
    layout: str  # of .data: NHW, NHWC or NCHW
    unlabelled: Optional[dict] = None
    labels: str = "targets"  # the attribute holding the labels
    split: Optional[tuple[str, ...]] = None  # the dataset needs one of these as `split`
    extra: dict = field(default_factory=dict)


_MNIST_LIKE = Recipe({"train": True}, {"train": False}, "NHW")
_CIFAR = Recipe({"train": True}, {"train": False}, "NHWC")
RECIPES = {
    "MNIST": _MNIST_LIKE, "FashionMNIST": _MNIST_LIKE, "KMNIST": _MNIST_LIKE,
    "EMNIST": Recipe({"train": True}, {"train": False}, "NHW",
                     split=("byclass", "bymerge", "balanced", "letters", "digits", "mnist")),
    "QMNIST": Recipe({"what": "train"}, {"what": "test"}, "NHW"),
    "USPS": Recipe({"train": True}, {"train": False}, "NHW"),
    "CIFAR10": _CIFAR, "CIFAR100": _CIFAR,
    "SVHN": Recipe({"split": "train"}, {"split": "test"}, "NCHW", labels="labels"),
    "STL10": Recipe({"split": "train"}, {"split": "test"}, "NCHW", unlabelled={"split": "unlabeled"}, labels="labels"),
}


def recipe_problem(name: str, split: Optional[str]) -> Optional[str]:
    """Why data.name / data.split cannot be read (None if they can); the config check calls this."""
    if name not in RECIPES:
        import torchvision.datasets

        if hasattr(torchvision.datasets, name):
            return (f"data.name: torchvision's {name} is not an image classification dataset layerwise can read; "
                    f"it reads {', '.join(RECIPES)}")
        return f"data.name: unknown torchvision dataset {name!r}; layerwise reads {', '.join(RECIPES)}"
    recipe = RECIPES[name]
    if recipe.split and split not in recipe.split:
        return f"data.split: torchvision's {name} needs data.split, one of {', '.join(recipe.split)} (got {split!r})"
    if not recipe.split and split is not None:
        return f"data.split: torchvision's {name} takes no data.split (got {split!r})"
    return None


def _expected_files(cls, root: Path, name: str) -> str:
    """Where torchvision looks, for the message when the files are absent."""
    if hasattr(cls, "resources"):
        files = [os.path.basename(url).removesuffix(".gz") for url, _ in cls.resources]
        return f"{root / name / 'raw'}: {', '.join(files)}"
    if hasattr(cls, "base_folder"):
        return f"{root / cls.base_folder}/ (from {cls.filename})"
    if hasattr(cls, "split_list"):
        return f"{root}: {', '.join(entry[1] for entry in cls.split_list.values())}"
    return str(root)


def _images(data, layout: str) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
    if layout == "NHW":
        images = images.unsqueeze(1)
    elif layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    return images.contiguous()


def _labels(dataset, recipe: Recipe) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(getattr(dataset, recipe.labels))).long()
    return labels[:, 0] if labels.dim() == 2 else labels  # QMNIST: the class is the first of 8 columns


def load_torchvision(root: Path, name: str, split: Optional[str], allow_download: bool) -> SourceData:
    import torchvision.datasets

    problem = recipe_problem(name, split)
    if problem:
        raise DataError(problem)
    recipe, cls = RECIPES[name], getattr(torchvision.datasets, name)
    extra = {"split": split} if recipe.split else {}

    def part(kwargs: dict) -> Part:
        dataset = _construct(cls, root, {**kwargs, **extra}, allow_download, name)
        images = _images(dataset.data, recipe.layout)
        return Part(images, _labels(dataset, recipe), list(range(len(images))))

    train, test = part(recipe.train), part(recipe.test)
    unlabelled = None
    if recipe.unlabelled:
        unlabelled = part(recipe.unlabelled)
        unlabelled.labels = torch.full((len(unlabelled),), UNLABELLED)
    classes = list(getattr(cls, "classes", None) or [])
    n_classes = int(max(train.labels.max(), test.labels.max())) + 1
    if len(classes) != n_classes:  # USPS and SVHN have no class names; EMNIST's depend on the split
        classes = [str(i) for i in range(n_classes)]
    label = name + (f" ({split})" if split else "")
    return SourceData(what=f"torchvision {label} in {root}", train=train, test=test, unlabelled=unlabelled,
                      classes=classes, fingerprint=tensor_digest(
                          train.images, train.labels, test.images, test.labels,
                          *([unlabelled.images] if unlabelled else [])))


def _construct(cls, root: Path, kwargs: dict, allow_download: bool, name: str):
    try:
        return cls(str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as missing:
        if not allow_download:
            raise DataError(f"torchvision {name} is not in {root}: torchvision expects {_expected_files(cls, root, name)} "
                            f"({missing}). This machine may be offline: put the files there, or name a data "
                            f"root that holds them (--data-root)") from None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # offline machines should fail fast, not hang on a mirror
    try:
        return cls(str(root), download=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any network failure ends in the clear message
        raise DataError(f"torchvision {name} is not in {root} and downloading it failed ({type(exc).__name__}: "
                        f"{exc}); torchvision expects {_expected_files(cls, root, name)}") from None
    finally:
        socket.setdefaulttimeout(previous)
