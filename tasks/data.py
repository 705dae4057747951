"""Load MNIST once per run and hand later tasks a path, not tensors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from prefect import task

from layerwise.config import DataConfig
from layerwise.data import load_mnist
from tasks.logs import run_logger


@dataclass(frozen=True)
class DataFiles:
    """The run's splits on disk: what ablation cells (threads or Dask workers) and analyses read."""
    inputs: str  # inputs.pt: {"train", "val", "test"} pixels in [0, 1], one row per image
    labels: str  # labels.pt: the same splits' labels, and the split's positions in the official set


@task(name="prepare-data", retries=1, retry_delay_seconds=2)
def prepare_data(data_root: str, cfg: DataConfig, workdir: str) -> DataFiles:
    """Writes inputs.pt (train/val/test pixels, the layout every stage reads and writes) and
    labels.pt (labels and the split's positions in the official training set)."""
    mnist = load_mnist(Path(data_root), cfg.train_size, cfg.val_size, cfg.split_seed)
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    inputs, labels = out / "inputs.pt", out / "labels.pt"
    torch.save({"train": mnist.x_train, "val": mnist.x_val, "test": mnist.x_test}, inputs)
    torch.save({"train": mnist.y_train, "val": mnist.y_val, "test": mnist.y_test,
                "train_index": mnist.train_index, "val_index": mnist.val_index}, labels)
    run_logger().info(f"MNIST: {len(mnist.x_train)} train, {len(mnist.x_val)} validation, "
                          f"{len(mnist.x_test)} test images")
    return DataFiles(str(inputs), str(labels))
