"""Everything a run is checked for before it starts, done once: the config (schema, schedule,
memory estimate), the data files and the tracking store. `layerwise run` checks and hands the
result to the flow; a run started by `serve` is checked by the flow itself."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flows.schedules import check_schedules
from layerwise.config import PipelineConfig, load_pipeline
from layerwise.data import ensure_mnist
from layerwise.memory import check_fits
from layerwise.paths import data_root


@dataclass(frozen=True)
class CheckedRun:
    """A run that passed every check: its validated config, its data and the store it logs to."""
    pipeline: str
    cfg: PipelineConfig
    data_root: str
    fingerprint: str  # of the data files (part of every stage's store key)
    tracking_uri: str


def check_run(pipeline: str, config_path: Path | str, overrides: list[str],
              data_root_arg: Optional[str] = None) -> CheckedRun:
    """Raises ConfigError or DataError (exit 2) or TrackingError (exit 1) before anything runs.
    The data is downloaded only where no folder was named (no --data-root, no MNIST_ROOT)."""
    cfg = load_pipeline(pipeline, config_path, overrides)
    check_schedules({pipeline: cfg}, config_path)
    check_fits(cfg, pipeline=pipeline, source=str(config_path))
    root = data_root(data_root_arg)
    fingerprint = ensure_mnist(root, allow_download=data_root_arg is None and "MNIST_ROOT" not in os.environ)
    from tasks.tracking import check_store  # MLflow's import is slow: after the quick checks

    return CheckedRun(pipeline, cfg, str(root), fingerprint, check_store())
