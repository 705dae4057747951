"""Reuse of finished work across runs, keyed by what determines it and nothing else.

A pretrained stage is determined by the data (the official files' fingerprint and the split), the
pretraining seed, the configs of its layer and every layer below it, and the code that trains it.
The code version hashes the torch sources that affect a trained stage, so editing a training loop
invalidates old stages while editing a flow, a task or the tracking code does not. A change of
those sources shown to train every number exactly as before (a refactor) may be recorded in
SAME_AS as continuing the version before it, so that the stages stored before it stay in use.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

PACKAGE = Path(__file__).resolve().parent.parent  # layerwise/
TRAINING_SOURCES = ("nn/models.py", "nn/losses.py", "nn/transfer.py", "nn/unlabelled.py",
                    "train/loop.py", "train/optim.py", "train/evaluate.py", "train/autoencoder.py",
                    "train/classifier.py", "train/stack.py", "train/finetune.py", "train/unroll.py",
                    "machine/cpu.py", "store/checkpoint.py", "store/files.py", "datasets/splits.py",
                    # how a source's images become pixels (decoding, layout, scaling, the held-out test split)
                    "datasets/source.py", "datasets/load.py", "datasets/mnist.py", "datasets/torchvision_source.py",
                    "datasets/folder.py", "datasets/arrays.py")


def _hash_sources(package: Path) -> str:
    digest = hashlib.sha256()
    for name in TRAINING_SOURCES:
        digest.update(name.encode())
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:12]


# The version of the code this process runs: the sources as they were when it started. A sweep or
# a server runs for hours while its sources are edited; keys read from disk then would store work
# of the old code under the new code's key.
_RUNNING = (PACKAGE, _hash_sources(PACKAGE))


# The hash of sources that train exactly what the version they map to trained: the stages that
# version stored are reused. Recorded only for a change whose trainings were compared bit for bit
# with the code before it; any edit after it hashes to a version of its own again.
SAME_AS = {
    # issue 29: the core in rooms by kind (layerwise/{nn,train,store,machine}/...), one epoch loop;
    # quickstart's test error and 19 trainings (dense, conv, bf16, every fine-tune objective, unroll
    # schedules) the same to the bit as under 030e2f238a07, the flat layout's last version
    "b99ead07a159": "030e2f238a07",
}


def code_version() -> str:
    """The training code's version: of the code this process loaded, or (PACKAGE pointed at
    another copy, as the tests do) of that copy as it is now; SAME_AS maps a recorded refactor's
    hash to the version it continues."""
    digest = _RUNNING[1] if PACKAGE == _RUNNING[0] else _hash_sources(PACKAGE)
    return SAME_AS.get(digest, digest)


def content_key(payload: dict) -> str:
    """A stable key of a JSON-able payload plus the training code version."""
    text = json.dumps({"payload": payload, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def stage_key(pretrain: dict, index: int, data_fingerprint: str) -> str:
    """pretrain = PipelineConfig.pretrain_dict(); the key of the stack's first `index` layers."""
    return content_key({"kind": "stage", "seed": pretrain["seed"], "data": pretrain["data"],
                        "fingerprint": data_fingerprint, "layers": pretrain["layers"][:index]})


@dataclass
class Entry:
    folder: Path
    meta: dict

    def file(self, name: str) -> Path:
        return self.folder / name


T = TypeVar("T")
DAMAGED = ".damaged"  # beside the entries; dot-named like the staging folders, so never a key


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _checksum(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _verify(folder: Path) -> tuple[Optional[dict], str]:
    """The entry's metadata, or why the entry cannot be trusted."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return None, "meta.json is missing"
    except (OSError, ValueError) as exc:
        return None, f"meta.json is unreadable: {exc}"
    if not isinstance(meta, dict) or "checksum" not in meta or not isinstance(meta.get("files"), dict):
        return None, "no checksum (written by an older version, cannot be verified)"
    if _checksum({k: v for k, v in meta.items() if k != "checksum"}) != meta["checksum"]:
        return None, "meta.json does not match its checksum (edited or damaged)"
    for name, digest in meta["files"].items():
        if not (folder / name).is_file():
            return None, f"{name} is missing"
        if _file_digest(folder / name) != digest:
            return None, f"{name} does not match its checksum (truncated, replaced or damaged)"
    return meta, ""


def load_error(exc: BaseException) -> str:
    """torch's reason a file did not load, without its advice to retry with weights_only=False:
    that would execute whatever a damaged or foreign file holds."""
    text = str(exc)
    reason = text.partition("WeightsUnpickler error:")[2].strip() or text
    first = (reason.split(". ")[0].splitlines() or [""])[0].strip()
    if "weights_only" in first:
        first = "not a plain tensor file"
    return f"{type(exc).__name__}: {first}"


def load_file(path: Path | str, loader: Callable[[str], T]) -> T:
    """loader(path) for a file that should load (a verified store file); a failure names the
    file and torch's reason, never its weights_only=False advice."""
    try:
        return loader(str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure means the file is unusable
        raise RuntimeError(f"could not load {path} ({load_error(exc)})") from None


class Store:
    """Folders named by key under root; an entry appears whole (atomic rename) or not at all, so
    concurrent runs and runs killed mid-write never see a half-written entry.

    meta.json records a sha256 of each file and a checksum of the whole metadata (the results
    other runs reuse: metrics, run id), both checked on every get. An entry that fails (damaged on
    disk, edited by hand, written before checksums) is moved to root/.damaged/ for inspection with
    one warning naming it and why, and reads as absent: the work is redone, never loaded and never
    fatal. warn receives that line (default: the 'layerwise' logger)."""

    def __init__(self, root: Path, warn: Optional[Callable[[str], Any]] = None):
        self.root = Path(root)
        self.warn = warn or logging.getLogger("layerwise").warning

    def get(self, key: str) -> Optional[Entry]:
        folder = self.root / key
        if not os.path.lexists(folder):
            return None
        meta, problem = _verify(folder)
        if meta is None:
            self.set_aside(key, problem)
            return None
        return Entry(folder, meta)

    def load(self, key: str, loader: Callable[[Entry], T]) -> Optional[tuple[Entry, T]]:
        """get(key) and loader(entry); an entry that verifies but still does not load is set
        aside the same way (and None returned)."""
        entry = self.get(key)
        if entry is None:
            return None
        try:
            return entry, loader(entry)
        except Exception as exc:  # noqa: BLE001 - whatever the loader trips on, the entry is unusable
            self.set_aside(key, f"does not load: {load_error(exc)}")
            return None

    def set_aside(self, key: str, why: str) -> None:
        folder = self.root / key
        target = self.root / DAMAGED / f"{key}-{datetime.now():%Y%m%dT%H%M%S.%f}"
        try:
            target.parent.mkdir(exist_ok=True)
            os.rename(folder, target)
        except FileNotFoundError:
            return  # a concurrent run set it aside first, and said so
        except OSError as exc:
            self.warn(f"damaged cache entry {folder} ({why}) could not be set aside ({exc}); it is ignored")
            return
        self.warn(f"damaged cache entry {folder} ({why}): moved to {target}; it will be recomputed")

    def put(self, key: str, files: dict[str, Path], meta: dict) -> Entry:
        """Copies files (name -> source) into the entry; when another writer got there first,
        theirs is kept (both are the same computation); a damaged entry at the key is set aside."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
        try:
            for name, source in files.items():
                shutil.copyfile(source, staging / name)
            # through JSON and back, so the checksum is of exactly what a later get reads
            payload = json.loads(json.dumps({**meta, "files": {n: _file_digest(staging / n) for n in sorted(files)}}))
            (staging / "meta.json").write_text(json.dumps({**payload, "checksum": _checksum(payload)}, indent=2))
            for _ in range(2):
                try:
                    os.rename(staging, self.root / key)
                    break
                except OSError:
                    if self.get(key) is not None:
                        break  # a concurrent writer finished first
                    # get set aside the damaged entry that blocked the rename: try once more
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        entry = self.get(key)
        if entry is None:
            raise OSError(f"could not store cache entry {key} under {self.root}")
        return entry
