"""The run's split files, their one owner: inputs.pt (each split's pixels, one row per image),
labels.pt (the labels, each image's identity in the source, the class names, the image shape) and
codes.pt (a stack's codes of each split). Written once per run (its prepare-data step, and the
stack's or the unroll's codes), read by every later step, in threads or Dask workers, which are
handed the paths. Plain tensors and lists, read with weights_only=True."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from layerwise.datasets.splits import DataSplits, label_subset

INPUTS, LABELS, CODES = "inputs.pt", "labels.pt", "codes.pt"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitLabels:
    """What labels.pt holds. train labels the first len(train) rows of inputs' "train" (the
    labelled images; the unlabelled ones follow them)."""
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_ids: list  # each labelled training image's identity in the source (an index or a path)
    val_ids: list
    classes: list[str]
    shape: tuple[int, int, int]  # C, H, W

    def subset(self, n: int, seed: int) -> tuple[torch.Tensor, list]:
        """A fine-tune's n labelled images (class-balanced, nested across n, drawn by seed): their
        positions in the training rows and their identities in the source."""
        positions = label_subset(self.train, n, seed)
        return positions, [self.train_ids[i] for i in positions.tolist()]


def save_splits(folder: Path | str, splits: DataSplits) -> tuple[Path, Path]:
    """inputs.pt and labels.pt of a run's splits, in folder; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inputs, labels = folder / INPUTS, folder / LABELS
    torch.save({"train": splits.x_train, "val": splits.x_val, "test": splits.x_test}, inputs)
    torch.save({"train": splits.y_train, "val": splits.y_val, "test": splits.y_test, "train_ids": splits.train_ids,
                "val_ids": splits.val_ids, "classes": splits.classes, "shape": list(splits.shape)}, labels)
    return inputs, labels


def load_inputs(path: Path | str, splits: tuple[str, ...] = SPLITS) -> dict[str, torch.Tensor]:
    """The pixels of the named splits (a sweep's trial leaves "test" out: it never reads it)."""
    saved = torch.load(path, weights_only=True)
    return {split: saved[split] for split in splits}


def load_labels(path: Path | str) -> SplitLabels:
    saved = torch.load(path, weights_only=True)
    return SplitLabels(saved["train"], saved["val"], saved["test"], saved["train_ids"], saved["val_ids"],
                       saved["classes"], tuple(saved["shape"]))


def save_codes(path: Path | str, codes: dict[str, torch.Tensor]) -> Path:
    """Each split's codes (moved to the CPU: any later step, on any device, reads them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({split: c.cpu() for split, c in codes.items()}, path)
    return path


def load_codes(path: Path | str, splits: Optional[tuple[str, ...]] = None) -> dict[str, torch.Tensor]:
    saved = torch.load(path, weights_only=True)
    return saved if splits is None else {split: saved[split] for split in splits}
