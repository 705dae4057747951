"""Where things live. Defaults resolve against the project root, so the working directory doesn't matter."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "pipelines.yaml"
MLRUNS = PROJECT_ROOT / "mlruns"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{MLRUNS / 'mlflow.db'}"


def default_artifact_root() -> str:
    return (MLRUNS / "artifacts").as_uri()


def work_root() -> Path:
    """Scratch space for intermediate tensors (codes, splits); never the data folder."""
    return Path(os.environ.get("LAYERWISE_WORKDIR") or PROJECT_ROOT / ".layerwise").resolve()


def data_root(cli_value: str | None = None) -> Path:
    return Path(cli_value or os.environ.get("MNIST_ROOT") or "data").resolve()
