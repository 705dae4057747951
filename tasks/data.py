"""Load the run's images once and hand later tasks a path, not tensors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task

from layerwise.config import DataConfig
from layerwise.datasets import load_source
from layerwise.datasets.splits import split_source
from layerwise.paths import work_root
from layerwise.store.files import save_splits
from tasks.datasets import split
from tasks.logs import run_logger


@dataclass(frozen=True)
class DataFiles:
    """The run's splits on disk: what ablation cells (threads or Dask workers) and analyses read."""
    inputs: str  # inputs.pt: {"train", "val", "test"} pixels in [0, 1], one row per image
    labels: str  # labels.pt: the labels, each image's identity in the source, the class names
    source_uri: str = ""  # where the images came from (a folder or file): MLflow's dataset source
    fingerprint: str = ""  # the source's content fingerprint
    dataset: str = ""     # the data's short name, e.g. "MNIST"
    splits: tuple = ()    # tasks.datasets.Split of training, validation, test (and the unlabelled pool)

    def datasets(self, *contexts: str) -> list:
        return [s for s in self.splits if s.context in contexts]


def decode_cache() -> Path:
    """Where a folder's decoded images are kept (keyed by the folder's content)."""
    return work_root() / "decoded"


@task(name="prepare-data", retries=1, retry_delay_seconds=2)
def prepare_data(data_root: str, cfg: DataConfig, workdir: str) -> DataFiles:
    """Writes the run's split files (layerwise.store.files: inputs.pt, the train/val/test pixels, "train"
    being what pretraining sees, the labelled training images first and then every unlabelled image;
    labels.pt, the labels of the labelled rows, of validation and test, each image's identity in the
    source, the classes)."""
    source = load_source(cfg, Path(data_root), decode_cache(), log=run_logger().info)
    splits = split_source(source, cfg.train_size, cfg.val_size, cfg.split_seed)
    inputs, labels = save_splits(workdir, splits)
    unlabelled = len(splits.x_train) - splits.n_labelled
    names = ", ".join(splits.classes[:12]) + (f", ... ({len(splits.classes)} in all)" if len(splits.classes) > 12 else "")
    run_logger().info(f"{source.what}: {len(splits.classes)} classes: {names}; images {'x'.join(map(str, splits.shape))}")
    for note in source.notes:
        run_logger().info(f"{source.what}: {note}")
    run_logger().info(f"{source.what}: {splits.n_labelled} labelled training images"
                      + (f" + {unlabelled} unlabelled (pretraining only)" if unlabelled else "")
                      + f", {len(splits.x_val)} validation, {len(splits.x_test)} test images")
    name = cfg.name if cfg.source == "torchvision" else ("MNIST" if cfg.source == "mnist" else Path(cfg.path).name)
    n_test = len(splits.x_test)
    pool = [f"unlabelled:{i}" for i in range(len(splits.x_train) - splits.n_labelled)]
    found = (split("training", name, source.fingerprint, splits.train_ids + pool),
             split("validation", name, source.fingerprint, splits.val_ids),
             split("test", name, source.fingerprint, [f"test:{i}" for i in range(n_test)]))
    if pool:
        found += (split("unlabelled pool", name, source.fingerprint, pool),)
    return DataFiles(str(inputs), str(labels), source_uri(cfg, Path(data_root)), source.fingerprint, name, found)


def source_uri(cfg: DataConfig, root: Path) -> str:
    """The folder or file a source's images came from."""
    if cfg.source == "mnist":
        from layerwise.datasets.mnist import raw_dir

        return str(raw_dir(root).resolve())
    if cfg.source == "torchvision":
        return str((root / cfg.name).resolve())
    return str(Path(cfg.path).expanduser().resolve())
