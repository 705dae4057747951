"""Progress lines go to the Prefect run log (UI and console); outside a run (task.fn in tests) to stdlib logging."""
from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("layerwise")


def epoch_reporter(mlf, run_id: str):
    """The training loops' callback: a progress line per epoch and the epoch's metrics (step = epoch)."""
    from tasks import tracking

    logger = run_logger()

    def report(epoch_report) -> None:
        logger.info(epoch_report.line())
        tracking.log_metrics(mlf, run_id, epoch_report.metrics, epoch_report.epoch)

    return report
