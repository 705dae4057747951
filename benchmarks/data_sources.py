"""make bench, data sources: MNIST's 70,000 images written as a folder of PNGs (numbered, so the
folder keeps the official order), decoded the first time and then read from the decode cache, and
checked to give the same split as the official files."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from layerwise.config import DataConfig
from layerwise.datasets.splits import split_source
from layerwise.datasets import load_source

SPLIT = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def write_png_folder(root: Path, out: Path, limit: int | None = None) -> int:
    from torchvision.datasets import MNIST
    from torchvision.io import encode_png, write_file

    written = 0
    for part, train in (("labelled", True), ("test", False)):
        dataset = MNIST(str(root), train=train)
        for i, (image, label) in enumerate(zip(dataset.data[:limit], dataset.targets[:limit])):
            folder = out / part / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            write_file(str(folder / f"{i:05d}.png"), encode_png(image[None]))
            written += 1
    return written


def run(root: Path, scratch: Path, quick: bool, log=print) -> dict:
    folder, cache = scratch / "mnist-png", scratch / "decoded"
    images = write_png_folder(root, folder, 10000 if quick else None)
    cfg = DataConfig(source="folder", path=str(folder), channels=1)
    t = time.perf_counter()
    first = load_source(cfg, root, cache)
    decode = time.perf_counter() - t
    t = time.perf_counter()
    second = load_source(cfg, root, cache)
    cached = time.perf_counter() - t
    assert "decode cache" in second.notes[0]
    result = {"images": images, "decode_seconds": decode, "cache_seconds": cached}
    log(f"  {images} PNGs: decoded in {decode:.1f} s, loaded from the cache in {cached:.2f} s")
    if not quick:  # the same images in the same order as the official files: the same split
        official = split_source(load_source(DataConfig(), root, cache), None, 10000, 0)
        through_folder = split_source(first, None, 10000, 0)
        result["same_split_as_official"] = all(torch.equal(getattr(official, k), getattr(through_folder, k))
                                               for k in SPLIT)
        log(f"  same split as the official files: {result['same_split_as_official']}")
    return result
