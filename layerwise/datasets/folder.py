"""source: folder — images on disk. `labelled/<class>/...` (the class is the folder's name), an
optional `unlabelled/` (any nesting) and an optional `test/<class>/...`. Decoded once with
torchvision.io into a cache keyed by every file's path, size and modification time, so a second
run loads one tensor file instead of decoding again."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch

from layerwise.datasets.source import UNLABELLED, Part, SourceData
from layerwise.errors import DataError

EXTENSIONS = {".png", ".jpg", ".jpeg"}
CACHE_FORMAT = 1  # bump when the cached layout changes


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _classified(folder: Path, root: Path) -> tuple[list[str], list[list[Path]]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class folders (the layout is {folder.name}/<class>/<image>)")
    files = []
    for name in classes:
        found = _images_under(folder / name)
        if not found:
            raise DataError(f"{folder / name}: an empty class folder (no PNG or JPEG images)")
        files.append(found)
    return classes, files


def scan(root: Path) -> dict:
    """The folder's files by part: {'labelled': (classes, files per class), 'unlabelled': files, 'test': ...}."""
    if not root.is_dir():
        raise DataError(f"data.path {root}: no such folder (the layout is labelled/<class>/<image>, optional "
                        "unlabelled/ and test/<class>/)")
    if not (root / "labelled").is_dir():
        raise DataError(f"{root}: no labelled/ folder (the layout is labelled/<class>/<image>, optional unlabelled/ "
                        "and test/<class>/)")
    found = {"labelled": _classified(root / "labelled", root)}
    if (root / "unlabelled").is_dir():
        found["unlabelled"] = _images_under(root / "unlabelled")
    if (root / "test").is_dir():
        found["test"] = _classified(root / "test", root)
        unknown = sorted(set(found["test"][0]) - set(found["labelled"][0]))
        if unknown:
            raise DataError(f"{root}: test/ has classes {unknown} that labelled/ has not")
    return found


def _all_files(found: dict) -> list[Path]:
    files = [f for per_class in found["labelled"][1] for f in per_class] + found.get("unlabelled", [])
    return files + [f for per_class in found.get("test", (None, []))[1] for f in per_class]


def content_key(root: Path, files: list[Path], channels: Optional[int], size: Optional[tuple[int, int]]) -> str:
    """Every file's path, size and modification time, and how images are converted."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{channels}|{size}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _decoder(channels: int, size: Optional[tuple[int, int]], root: Path):
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2.functional import resize

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB

    def decode(path: Path) -> torch.Tensor:
        try:
            image = decode_image(read_file(str(path)), mode=mode)
        except (RuntimeError, ValueError, OSError) as exc:
            raise DataError(f"{path.relative_to(root)} in {root}: unreadable or truncated image "
                            f"({(str(exc).splitlines() or [''])[0]})") from None
        if size is not None and tuple(image.shape[1:]) != tuple(size):
            image = resize(image, list(size), antialias=True)
        return image

    return decode


def _channels_of(path: Path, root: Path) -> int:
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return 1 if decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED).shape[0] <= 2 else 3
    except (RuntimeError, ValueError, OSError) as exc:
        raise DataError(f"{path.relative_to(root)} in {root}: unreadable or truncated image ({exc})") from None


def _decode_all(files: list[Path], decode, root: Path) -> torch.Tensor:
    if not files:
        return torch.empty(0)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # the decoders release the GIL
        images = list(pool.map(decode, files, chunksize=256))
    first = images[0].shape
    for path, image in zip(files, images):
        if image.shape != first:
            raise DataError(f"{root}: images differ in size ({files[0].relative_to(root)} is {tuple(first[1:])}, "
                            f"{path.relative_to(root)} is {tuple(image.shape[1:])}); set data.image_size: [H, W]")
    return torch.stack(images)


def _labelled_part(classes_files: tuple[list[str], list[list[Path]]], decode, root: Path,
                   classes: list[str]) -> Part:
    """Images in the order of their names inside the class folders (the class breaks ties): a folder
    written from another source with numbered file names (00000.png, ...) keeps that source's order,
    so the seeded split picks the same images."""
    names, per_class = classes_files
    entries = sorted((str(Path(*f.relative_to(root).parts[2:])), classes.index(name), f)  # labelled|test/class/...
                     for name, group in zip(names, per_class) for f in group)
    files = [f for _, _, f in entries]
    labels = torch.tensor([c for _, c, _ in entries], dtype=torch.long)
    return Part(_decode_all(files, decode, root), labels, [str(f.relative_to(root)) for f in files])


def load_folder(root: Path, channels: Optional[int], size: Optional[tuple[int, int]], cache_dir: Path,
                log=None) -> SourceData:
    root = root.resolve()
    found = scan(root)
    files = _all_files(found)
    channels = channels or _channels_of(files[0], root)
    key = content_key(root, files, channels, size)
    cached = cache_dir / f"folder-{key}.pt"
    classes = found["labelled"][0]
    if cached.is_file():
        try:
            saved = torch.load(cached, weights_only=True)
            parts = {name: Part(*saved[name]) if saved[name] else None for name in ("train", "test", "unlabelled")}
            return SourceData(f"folder {root}", parts["train"], parts["test"], classes, key, parts["unlabelled"],
                              notes=[f"loaded from the decode cache {cached}"])
        except Exception:  # noqa: BLE001 - a damaged cache file is decoded again
            cached.unlink(missing_ok=True)
    if log:
        log(f"decoding {len(files)} images under {root} (once: cached in {cache_dir})")
    decode = _decoder(channels, size, root)
    train = _labelled_part(found["labelled"], decode, root, classes)
    test = _labelled_part(found["test"], decode, root, classes) if "test" in found else None
    unlabelled = None
    if found.get("unlabelled"):
        pool = found["unlabelled"]
        unlabelled = Part(_decode_all(pool, decode, root), torch.full((len(pool),), UNLABELLED),
                          [str(f.relative_to(root)) for f in pool])
    for part in (test, unlabelled):
        if part is not None and part.images.shape[1:] != train.images.shape[1:]:
            raise DataError(f"{root}: images differ in size between labelled/ ({tuple(train.images.shape[2:])}) and "
                            f"{part.ids[0]} ({tuple(part.images.shape[2:])}); set data.image_size: [H, W]")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cached.with_suffix(f".tmp{os.getpid()}")
    torch.save({name: (p.images, p.labels, p.ids) if p is not None else None
                for name, p in (("train", train), ("test", test), ("unlabelled", unlabelled))}, staging)
    os.replace(staging, cached)  # whole or absent: a run killed while writing leaves no half cache
    return SourceData(f"folder {root}", train, test, classes, key, unlabelled)
