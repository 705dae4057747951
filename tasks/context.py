"""What every task of one pipeline execution shares: its parent MLflow run, the experiment, the
pipeline's name and the run's scratch folder. One object instead of ids passed by position."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunContext:
    parent_run_id: str
    experiment_id: str
    pipeline: str
    workdir: Path  # per-run scratch (removed when the run ends); weights live in the store and MLflow
