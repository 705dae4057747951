"""source: mnist — the four official MNIST files under <data root>/MNIST/raw (the default source)."""
from __future__ import annotations

from pathlib import Path

from layerwise.datasets.splits import ensure_mnist, raw_dir
from layerwise.datasets.source import Part, SourceData


def load_official(root: Path, allow_download: bool) -> SourceData:
    from torchvision.datasets import MNIST

    fingerprint = ensure_mnist(root, allow_download)  # the files' MD5s, checked
    train, test = MNIST(str(root), train=True, download=False), MNIST(str(root), train=False, download=False)
    return SourceData(
        what=f"MNIST (official files) in {raw_dir(root)}",
        train=Part(train.data.unsqueeze(1), train.targets.long(), list(range(len(train.data)))),
        test=Part(test.data.unsqueeze(1), test.targets.long(), list(range(len(test.data)))),
        classes=list(train.classes), fingerprint=fingerprint)
