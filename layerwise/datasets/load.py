"""One entry point over the sources: the `data:` block in, a checked SourceData out."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from layerwise.datasets.source import SourceData, check_source
from layerwise.errors import DataError


def source_path(path: Optional[str]) -> Path:
    """data.path as given: `layerwise run` has made a relative one absolute against the pipelines
    file's folder; from Python a relative path is the working directory's."""
    if not path:
        raise DataError("data.path is missing: name the folder (source: folder) or the .npz file (source: arrays)")
    return Path(path).expanduser().resolve()


def hold_out_test(data: SourceData, fraction: float, seed: int) -> SourceData:
    """A source without test images gets a seeded, class-balanced share of its labelled images as its
    test split (the same images for every run with the same seed)."""
    from layerwise.datasets.splits import balanced_order

    labelled = data.train.labelled
    n_test = max(len(data.classes), round(fraction * len(labelled)))
    if n_test >= len(labelled):
        raise DataError(f"{data.what}: {len(labelled)} labelled images are too few to hold out a test split "
                        f"(data.test_fraction {fraction}); add a test/ folder or x_test")
    chosen = labelled[balanced_order(data.train.labels[labelled], seed)[:n_test].sort().values]
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[chosen] = False
    data.test, data.train = data.train.take(chosen), data.train.take(keep.nonzero().flatten())
    data.notes.append(f"no test images: {n_test} labelled images held out as the test split "
                      f"(class-balanced, seed {seed}, data.test_fraction {fraction})")
    return data


# The read a run's checks made, kept for the run's own read of the same data block (taken once):
# the checks decode the images to bind the config to them, and the run then uses exactly those.
_kept: dict[tuple, SourceData] = {}


def _read_key(cfg, root: Path) -> tuple:
    return cfg.model_dump_json(exclude={"found"}), str(Path(root).resolve())


def load_source(cfg, root: Path, cache_dir: Path, allow_download: bool = False,
                log: Optional[Callable[[str], None]] = None, keep: bool = False) -> SourceData:
    """cfg is a DataConfig. Raises DataError (exit 2) naming the file, folder or key at fault.
    keep: hold this read for the next load of the same block and root in this process (the checks
    before a run keep theirs for the run's prepare-data step); a kept read is handed out once."""
    root = Path(root)
    key = _read_key(cfg, root)
    if (kept := _kept.pop(key, None)) is not None:
        return kept
    if cfg.source == "mnist":
        from layerwise.datasets.mnist import load_official

        data = load_official(root, allow_download)
    elif cfg.source == "torchvision":
        from layerwise.datasets.torchvision_source import load_torchvision

        data = load_torchvision(root, cfg.name, cfg.split, allow_download)
    elif cfg.source == "folder":
        from layerwise.datasets.folder import load_folder

        data = load_folder(source_path(cfg.path), cfg.channels,
                           tuple(cfg.image_size) if cfg.image_size else None, cache_dir, log)
    elif cfg.source == "arrays":
        from layerwise.datasets.arrays import load_arrays

        data = load_arrays(source_path(cfg.path))
    else:  # the schema allows no other
        raise DataError(f"data.source {cfg.source!r} is not a source")
    if data.test is None:
        data = hold_out_test(data, cfg.test_fraction, cfg.split_seed)
    data = check_source(data)
    if keep:
        _kept.clear()  # one run's data at a time
        _kept[key] = data
    return data
