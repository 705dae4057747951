"""source: mnist — the four official MNIST files under <data root>/MNIST/raw (the default source):
their MD5 checks, the images, and load_mnist (the files, split as a run splits them)."""
from __future__ import annotations

import hashlib
import socket
from pathlib import Path

from layerwise.datasets.source import Part, SourceData
from layerwise.datasets.splits import DataSplits, split_source
from layerwise.errors import DataError

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def raw_dir(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Files already checked in this process, by (path, size, mtime): a run checks the data before it
# starts and reads it inside the flow, and should not hash 55 MB twice.
_verified: set[tuple] = set()


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def verify_mnist(root: Path) -> str:
    """Check the four files' MD5s; returns a fingerprint of the data (used in cache keys)."""
    folder = raw_dir(root)
    problems = []
    for name, expected in MNIST_MD5.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif _stamp(path) in _verified:
            continue
        elif (actual := _md5(path)) != expected:
            problems.append(f"{name} is corrupt (md5 {actual}, expected {expected})")
        else:
            _verified.add(_stamp(path))
    if problems:
        raise DataError(
            f"MNIST data under {folder}: {'; '.join(problems)}. Put the four uncompressed official files "
            f"there (torchvision.datasets.MNIST layout), or point --data-root / MNIST_ROOT at the folder "
            f"that holds MNIST/raw/ (offline here: ../shared/data).")
    return hashlib.md5("".join(MNIST_MD5.values()).encode()).hexdigest()[:12]


def ensure_mnist(root: Path, allow_download: bool) -> str:
    """Verify the files, downloading them first when they are absent and downloading is allowed."""
    if allow_download and not all((raw_dir(root) / n).is_file() for n in MNIST_MD5):
        from torchvision.datasets import MNIST

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # offline machines should fail fast, not hang on a mirror
        try:
            MNIST(str(root), train=True, download=True)
        except Exception as exc:  # any network failure leaves the clear message below
            print(f"MNIST download into {root} failed: {exc}")
        finally:
            socket.setdefaulttimeout(previous)
    return verify_mnist(root)




def load_official(root: Path, allow_download: bool) -> SourceData:
    from torchvision.datasets import MNIST

    fingerprint = ensure_mnist(root, allow_download)  # the files' MD5s, checked
    train, test = MNIST(str(root), train=True, download=False), MNIST(str(root), train=False, download=False)
    return SourceData(
        what=f"MNIST (official files) in {raw_dir(root)}",
        train=Part(train.data.unsqueeze(1), train.targets.long(), list(range(len(train.data)))),
        test=Part(test.data.unsqueeze(1), test.targets.long(), list(range(len(test.data)))),
        classes=list(train.classes), fingerprint=fingerprint)


def load_mnist(root: Path, train_size: int | None, val_size: int, split_seed: int) -> DataSplits:
    """The official MNIST files, split: what `source: mnist` gives a run."""
    return split_source(load_official(Path(root), allow_download=False), train_size, val_size, split_seed)
