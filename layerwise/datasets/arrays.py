"""source: arrays — one .npz holding x_train and y_train (-1 marks an unlabelled image), and
optionally x_unlabelled, x_test and y_test. Images are uint8 0..255 or floats in [0, 1], shaped
(N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from layerwise.datasets.source import UNLABELLED, Part, SourceData, tensor_digest
from layerwise.errors import DataError

KEYS = ("x_train", "y_train", "x_unlabelled", "x_test", "y_test")


def _images(x: np.ndarray, key: str, where: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # NHWC
        elif x.shape[1] not in (1, 3):
            raise DataError(f"{where}: {key} has shape {x.shape}; images are (N, H, W), (N, H, W, C) or (N, C, H, W) "
                            "with C = 1 or 3")
    else:
        raise DataError(f"{where}: {key} has shape {x.shape}; images are (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise DataError(f"{where}: {key} holds NaN or infinite values")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DataError(f"{where}: {key} has float values outside [0, 1] (min {x.min():.4g}, max {x.max():.4g}): "
                            "give uint8 pixels 0..255 or floats scaled to [0, 1]")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{where}: {key} has integer values outside 0..255 (min {x.min()}, max {x.max()})")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))
    raise DataError(f"{where}: {key} has dtype {x.dtype}; give uint8 or float images")


def _labels(y: np.ndarray, key: str, n: int, where: str) -> torch.Tensor:
    if y.ndim != 1:
        raise DataError(f"{where}: {key} has shape {y.shape}; labels are one integer per image")
    if len(y) != n:
        raise DataError(f"{where}: {key} has {len(y)} labels but its images are {n}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.isfinite(y).all() or (y != np.round(y)).any():
            raise DataError(f"{where}: {key} holds non-integer labels (dtype {y.dtype}); labels are integers, "
                            "-1 for an unlabelled image")
    y = y.astype(np.int64)
    if (y < UNLABELLED).any():
        raise DataError(f"{where}: {key} holds {int(y.min())}; labels are 0 or more, -1 for an unlabelled image")
    return torch.from_numpy(y)


def load_arrays(path: Path) -> SourceData:
    where = f"data.path {path}"
    if not path.is_file():
        raise DataError(f"{where}: no such file (an .npz with x_train, y_train and optionally x_unlabelled, "
                        "x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{where}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    unknown = sorted(set(arrays) - set(KEYS))
    if unknown:
        raise DataError(f"{where}: unknown arrays {unknown}; the file holds {', '.join(KEYS)}")
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise DataError(f"{where}: no {key} (the file holds x_train, y_train and optionally x_unlabelled, "
                            "x_test, y_test)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{where}: x_test and y_test come together")
    x = _images(arrays["x_train"], "x_train", where)
    raw_labels = _labels(arrays["y_train"], "y_train", len(x), where)
    test: Optional[Part] = None
    raw_test = None
    if "x_test" in arrays:
        xt = _images(arrays["x_test"], "x_test", where)
        raw_test = _labels(arrays["y_test"], "y_test", len(xt), where)
        if (raw_test == UNLABELLED).any():
            raise DataError(f"{where}: y_test holds -1; every test image needs a label")
    # classes: the label values present, in order (labels 3 and 7 become classes 0 and 1, named "3", "7")
    present = torch.cat([raw_labels[raw_labels != UNLABELLED]] + ([raw_test] if raw_test is not None else [])).unique()
    index = {int(v): i for i, v in enumerate(present.tolist())}
    relabel = lambda y: torch.tensor([index.get(int(v), UNLABELLED) for v in y.tolist()], dtype=torch.long)  # noqa: E731
    train = Part(x, relabel(raw_labels), list(range(len(x))))
    if raw_test is not None:
        test = Part(xt, relabel(raw_test), list(range(len(xt))))
    unlabelled = None
    if "x_unlabelled" in arrays:
        xu = _images(arrays["x_unlabelled"], "x_unlabelled", where)
        unlabelled = Part(xu, torch.full((len(xu),), UNLABELLED), [f"x_unlabelled[{i}]" for i in range(len(xu))])
    tensors = [train.images, train.labels] + ([test.images, test.labels] if test else []) + \
        ([unlabelled.images] if unlabelled else [])
    return SourceData(f"arrays {path}", train, test, [str(v) for v in present.tolist()], tensor_digest(*tensors),
                      unlabelled)
