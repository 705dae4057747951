"""A source's images as a run's splits: train (labelled first, then every unlabelled image),
validation and test in memory, and the class-balanced label subsets a fine-tune draws."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from layerwise.config.schema import val_count
from layerwise.datasets.source import UNLABELLED
from layerwise.errors import DataError

@dataclass
class DataSplits:
    """A source split for a run, pixels flattened to C*H*W: float32 in [0, 1], or uint8 where the float
    copy would not fit comfortably (keeps_uint8; the loops scale each batch). x_train is what
    pretraining trains on: the labelled training images first (y_train: their labels), then every
    unlabelled image; validation comes out of the labelled images; the test images are the source's."""
    x_train: torch.Tensor
    y_train: torch.Tensor  # labels of x_train's first len(y_train) rows
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_ids: list  # identities in the source (index or relative path), so anyone can rebuild the split
    val_ids: list
    classes: list[str]
    shape: tuple[int, int, int]  # C, H, W

    @property
    def n_labelled(self) -> int:
        return len(self.y_train)


@dataclass
class Labelled:
    """The labelled training images and the validation split that selects the epoch kept (what
    train_classifier and finetune take)."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_unlabelled: Optional[torch.Tensor] = None  # the training images without a label here (finetune.unlabelled)


FLOAT_SHARE = 0.25  # pixels stay uint8 where their float copy would take more of the machine's memory


def keeps_uint8(values: int, total_memory: Optional[int] = None) -> bool:
    """Whether a run's pixels stay uint8 in memory, scaled to [0, 1] batch by batch: where their
    float32 copy (4 bytes a value) would take over FLOAT_SHARE of the machine's memory (STL10's
    unlabelled 100,000 x 27,648 values: 11 GB as floats, 2.8 GB as uint8). LAYERWISE_PIXELS=uint8 or
    float decides instead (the results are the same: x / 255 is computed either way)."""
    choice = os.environ.get("LAYERWISE_PIXELS", "auto")
    if choice not in ("auto", "uint8", "float"):
        raise DataError(f"LAYERWISE_PIXELS is {choice!r}: auto, uint8 or float")
    if choice != "auto":
        return choice == "uint8"
    import psutil

    return values * 4 > FLOAT_SHARE * (total_memory or psutil.virtual_memory().total)


def _flat(images: torch.Tensor, uint8: bool) -> torch.Tensor:
    from layerwise.datasets.source import to_unit

    flat = images.flatten(1)  # [N, C*H*W], also for N = 0
    return flat if uint8 and flat.dtype == torch.uint8 else to_unit(flat)


def split_source(source, train_size: int | None, val_size: int | float, split_seed: int) -> DataSplits:
    """A seeded permutation of the labelled training images: the first train_size of it (all if None)
    are drawn, the first val_size of those validate, the rest train (both in source order); the
    unlabelled images (marked -1 in the training part, and the unlabelled pool) join pretraining."""
    train = source.train
    labelled = train.labelled
    order = labelled[torch.randperm(len(labelled), generator=torch.Generator().manual_seed(split_seed))]
    pool = order[: train_size or len(order)]
    n_val = val_count(val_size, len(pool))
    val_index, train_index = pool[:n_val].sort().values, pool[n_val:].sort().values
    pool_images = [train.images[train_index]]
    unlabelled = (train.labels == UNLABELLED).nonzero().flatten()  # an .npz's y_train = -1
    if len(unlabelled):
        pool_images.append(train.images[unlabelled])
    if source.unlabelled is not None and len(source.unlabelled):
        pool_images.append(source.unlabelled.images)
    n_images = sum(map(len, pool_images)) + len(val_index) + len(source.test)
    uint8 = keeps_uint8(n_images * train.images[0].numel())
    x_train = _flat(torch.cat(pool_images) if len(pool_images) > 1 else pool_images[0], uint8)
    return DataSplits(
        x_train=x_train, y_train=train.labels[train_index], x_val=_flat(train.images[val_index], uint8),
        y_val=train.labels[val_index], x_test=_flat(source.test.images, uint8), y_test=source.test.labels,
        train_ids=[train.ids[i] for i in train_index.tolist()], val_ids=[train.ids[i] for i in val_index.tolist()],
        classes=list(source.classes), shape=tuple(source.shape))


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
