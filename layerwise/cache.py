"""Reuse of finished work across runs, keyed by what determines it and nothing else.

A pretrained stage is determined by the data (the official files' fingerprint and the split), the
pretraining seed, the configs of its layer and every layer below it, and the code that trains it.
The code version hashes the torch sources that affect a trained stage, so editing a training loop
invalidates old stages while editing a flow, a task or the tracking code does not.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PACKAGE = Path(__file__).resolve().parent
TRAINING_SOURCES = ("models.py", "losses.py", "training.py", "data.py", "checkpoint.py", "encode.py",
                    "transfer.py")


def code_version() -> str:
    digest = hashlib.sha256()
    for name in TRAINING_SOURCES:
        digest.update(name.encode())
        digest.update((PACKAGE / name).read_bytes())
    return digest.hexdigest()[:12]


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


class Store:
    """Folders named by key under root; an entry appears whole (atomic rename) or not at all, so
    concurrent runs and runs killed mid-write never see a half-written entry."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def get(self, key: str) -> Optional[Entry]:
        folder = self.root / key
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if not all((folder / name).is_file() for name in meta.get("files", [])):
            return None
        return Entry(folder, meta)

    def put(self, key: str, files: dict[str, Path], meta: dict) -> Entry:
        """Copies files (name -> source) into the entry; when another writer got there first,
        theirs is kept (both are the same computation)."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
        try:
            for name, source in files.items():
                shutil.copyfile(source, staging / name)
            (staging / "meta.json").write_text(json.dumps({**meta, "files": sorted(files)}, indent=2))
            try:
                os.rename(staging, self.root / key)
            except OSError:
                pass  # a concurrent writer finished first
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        entry = self.get(key)
        if entry is None:
            raise OSError(f"could not store cache entry {key} under {self.root}")
        return entry
