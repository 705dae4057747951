"""What every data source gives the pipeline: images as [N, C, H, W] tensors (uint8 0..255, or
float32 in [0, 1]), integer labels (-1: no label), and each image's identity in the source (an index,
or a file's path relative to the folder), so anyone can tell which images a run used."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from layerwise.errors import DataError

UNLABELLED = -1
Identity = Union[int, str]


@dataclass
class Part:
    """Images of one part of a source (its training images, its unlabelled pool, its test images)."""
    images: torch.Tensor  # [N, C, H, W]
    labels: torch.Tensor  # int64 [N]; UNLABELLED where an image has no label
    ids: list[Identity]

    def __len__(self) -> int:
        return len(self.images)

    def take(self, positions: torch.Tensor) -> "Part":
        positions = positions.long()
        return Part(self.images[positions], self.labels[positions], [self.ids[i] for i in positions.tolist()])

    @property
    def labelled(self) -> torch.Tensor:
        return (self.labels != UNLABELLED).nonzero().flatten()


@dataclass
class SourceData:
    """A whole source: its training images (labelled, and unlabelled marked -1), its unlabelled pool
    (images that never had labels), its test images (labelled), class names, and a fingerprint of the
    content (part of every stage-store key: other images, other stages)."""
    what: str  # for messages: "MNIST (official files) in /data", "folder /x", ...
    train: Part
    test: Part
    classes: list[str]
    fingerprint: str
    unlabelled: Optional[Part] = None
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    def sizes(self) -> dict[str, int]:
        labelled = len(self.train.labelled)
        return {"labelled_images": labelled,
                "unlabelled_images": len(self.train) - labelled + (len(self.unlabelled) if self.unlabelled else 0),
                "test_images": len(self.test)}


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Pixels as float32 in [0, 1] (uint8 is divided by 255, as torchvision's ToTensor does)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def digest(*chunks: Union[bytes, str]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return h.hexdigest()[:12]


def tensor_digest(*tensors: torch.Tensor) -> str:
    """A fingerprint of tensors' content (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


def check_source(data: SourceData) -> SourceData:
    """The checks every source passes: a DataError names what is wrong and where."""
    parts = [("training images", data.train), ("test images", data.test)]
    if data.unlabelled is not None:
        parts.append(("unlabelled images", data.unlabelled))
    shape = data.shape
    for what, part in parts:
        if part.images.dim() != 4:
            raise DataError(f"{data.what}: {what} must be [N, C, H, W], got shape {tuple(part.images.shape)}")
        if len(part) and tuple(part.images.shape[1:]) != shape:
            raise DataError(f"{data.what}: {what} are {tuple(part.images.shape[1:])} but the training images "
                            f"are {shape} (C, H, W): every image needs the same size")
        if part.images.dtype != torch.uint8:
            bad = ~torch.isfinite(part.images)
            if bad.any():
                raise DataError(f"{data.what}: {what} hold NaN or infinite values (image {part.ids[bad.flatten(1).any(1).nonzero()[0].item()]})")
            if len(part) and (part.images.min() < 0 or part.images.max() > 1):
                raise DataError(f"{data.what}: {what} have float values outside [0, 1] (min {part.images.min():.4g}, "
                                f"max {part.images.max():.4g}): give uint8 pixels 0..255 or floats scaled to [0, 1]")
    if shape[0] not in (1, 3):
        raise DataError(f"{data.what}: images have {shape[0]} channels; layerwise takes 1 (grey) or 3 (RGB)")
    labelled = data.train.labels[data.train.labelled]
    if len(labelled) == 0:
        raise DataError(f"{data.what}: no training image has a label")
    if len(data.test) == 0:
        raise DataError(f"{data.what}: no test images")
    if (data.test.labels == UNLABELLED).any():
        raise DataError(f"{data.what}: every test image needs a label")
    if len(labelled.unique()) < 2:
        raise DataError(f"{data.what}: the labelled images hold a single class ({data.classes[int(labelled[0])]}); "
                        "a classifier needs two or more")
    if int(max(labelled.max(), data.test.labels.max())) >= len(data.classes):
        raise DataError(f"{data.what}: a label is outside the {len(data.classes)} classes")
    return data
