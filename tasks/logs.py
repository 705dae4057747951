"""Progress lines go to the Prefect run log (UI and console); outside a run (task.fn in tests) to stdlib logging."""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("layerwise")


def epoch_reporter(mlf, run_id: str, every_s: float = 2.0):
    """The training loops' callback: a progress line per epoch and the epoch's metrics (step = epoch).

    Epochs shorter than every_s (tiny labelled sets) are batched: one line and one tracking call
    per every_s seconds, and always the last epoch, so logging never dominates training.
    """
    from mlflow.entities import Metric

    logger = run_logger()
    pending: list[Metric] = []
    last = [0.0]

    def report(epoch_report) -> None:
        now = time.monotonic()
        stamp = int(time.time() * 1000)
        pending.extend(Metric(k, float(v), stamp, epoch_report.epoch) for k, v in epoch_report.metrics.items())
        if now - last[0] >= every_s or epoch_report.epoch == epoch_report.epochs:
            logger.info(epoch_report.line())
            for start in range(0, len(pending), 1000):  # MLflow takes at most 1000 metrics per batch
                mlf.log_batch(run_id, metrics=pending[start:start + 1000])
            pending.clear()
            last[0] = now

    return report


def then(first: Callable, second: Optional[Callable]) -> Callable:
    """One callback that calls first, then second (if any)."""
    if second is None:
        return first

    def both(report) -> None:
        first(report)
        second(report)
    return both
