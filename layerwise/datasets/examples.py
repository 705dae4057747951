"""Real small data to try the other sources on without a download: scikit-learn's bundled 8x8
handwritten digits (1,797 images, 10 classes; Alpaydin & Kaynak's UCI set), written as an .npz
(source: arrays) or as an image folder (source: folder) with an unlabelled pool beside a few labels."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images as uint8 (N, 8, 8) (their 0..16 grey levels scaled to 0..255), and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def write_digits_npz(path: Path) -> Path:
    """x_train and y_train only: layerwise holds out the test split itself (data.test_fraction)."""
    images, labels = digits()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=images, y_train=labels)
    return path


def write_digits_folder(root: Path, labelled: int = 100, test: int = 400, seed: int = 0,
                        limit: Optional[int] = None) -> Path:
    """labelled/<digit>/NNNN.png (the first `labelled` of a seeded shuffle), test/<digit>/ (the next
    `test`), and every other image in unlabelled/ with its label dropped."""
    from torchvision.io import encode_png, write_file

    images, labels = digits()
    order = np.random.default_rng(seed).permutation(len(images))[:limit]
    for position, i in enumerate(order):
        part = "labelled" if position < labelled else "test" if position < labelled + test else "unlabelled"
        folder = root / part / (str(labels[i]) if part != "unlabelled" else "")
        folder.mkdir(parents=True, exist_ok=True)
        write_file(str(folder / f"{i:04d}.png"), encode_png(torch.from_numpy(images[i])[None]))
    return root
