"""Progress lines go to the Prefect run log (UI and console); outside a run (task.fn in tests) to stdlib
logging. The training loops report every epoch through their callback; what is printed is decided
here: a stage or cell says where it is at most every LINE_EVERY_S seconds (and always at its first
and last epoch), a grid or sweep after each cell or trial, each line with done / total and the
time left. Every epoch's metrics still go to MLflow."""
from __future__ import annotations

import contextlib
import logging
import time
from datetime import timedelta
from typing import Callable, Iterator, Optional

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from tasks.tracking import unreachable

LINE_EVERY_S = 10.0   # at most one progress line per stage or cell in this time
FLUSH_EVERY_S = 2.0   # per-epoch metrics are sent to MLflow in one call per this time (and at the end)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("layerwise")


def clock(seconds: float) -> str:
    """A duration as a clock reads it (0:04:05), as progress bars show it."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def eta(elapsed: float, done: int, total: int) -> str:
    """'0:01:10 elapsed, 0:04:05 left' at the pace of the done steps (done >= 1), or 'done in ...'."""
    if done >= total:
        return f"done in {clock(elapsed)}"
    return f"{clock(elapsed)} elapsed, {clock(elapsed / done * (total - done))} left"


class EpochProgress:
    """The training loops' callback for one stage or cell (one MLflow run).

    Every epoch's metrics go to the run (step = epoch), gathered into one tracking call per
    FLUSH_EVERY_S and at the last epoch, so logging never dominates short epochs. A line goes to
    the log at the first epoch, then at most every LINE_EVERY_S, and at the last: the stage, epochs
    done / total, the epoch's metrics, the time elapsed and left."""

    def __init__(self, mlf, run_id: str, line_every_s: float = LINE_EVERY_S, flush_every_s: float = FLUSH_EVERY_S):
        from mlflow.entities import Metric

        self._metric, self._mlf, self._run_id = Metric, mlf, run_id
        self._line_every, self._flush_every = line_every_s, flush_every_s
        self._logger = run_logger()
        self._pending: list = []
        self.started = time.monotonic()
        self._last_line = self._last_flush = self.started

    def __call__(self, report) -> None:
        now, stamp = time.monotonic(), int(time.time() * 1000)
        self._pending.extend(self._metric(k, float(v), stamp, report.epoch) for k, v in report.metrics.items())
        last = report.epoch == report.epochs
        if last or now - self._last_flush >= self._flush_every:
            self.flush()
        if last or report.epoch == 1 or now - self._last_line >= self._line_every:
            self._logger.info(self.line(report, now - self.started))
            self._last_line = now

    @staticmethod
    def line(report, elapsed: float) -> str:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in report.metrics.items())
        share = f"{100 * report.epoch / report.epochs:.0f}%"
        return (f"[{report.stage}] epoch {report.epoch}/{report.epochs} ({share})  {shown}  · "
                f"{eta(elapsed, report.epoch, report.epochs)}")

    def flush(self) -> None:
        for start in range(0, len(self._pending), 1000):  # MLflow takes at most 1000 metrics per batch
            self._mlf.log_batch(self._run_id, metrics=self._pending[start:start + 1000])
        self._pending.clear()
        self._last_flush = time.monotonic()


@contextlib.contextmanager
def epoch_progress(mlf, run_id: str) -> Iterator[EpochProgress]:
    """An EpochProgress for the block. A stage that fails or is pruned keeps the epochs it reported
    (its metrics are sent when the block ends); an interrupted one sends nothing more: its runs
    must end KILLED first."""
    progress = EpochProgress(mlf, run_id)
    try:
        yield progress
    except Exception as exc:
        if not unreachable(exc):  # a server that stopped answering would only time out again
            with contextlib.suppress(Exception):  # the stage's own error is what the user must see
                progress.flush()
        raise


class Countdown:
    """Cells of a grid or trials of a sweep: done / total and the time left, at the pace of those
    this process ran (a reused cell or a trial finished by an earlier process costs no time, so
    it does not count towards the pace)."""

    def __init__(self, total: int, unit: str, done: int = 0):
        self.total, self.unit, self.done, self.timed = total, unit, done, 0
        self.started = time.monotonic()

    def finished(self, timed: bool = True) -> str:
        """One more done; the progress text for the log line."""
        self.done += 1
        self.timed += timed
        elapsed = time.monotonic() - self.started
        if self.done >= self.total:
            return f"{self.done}/{self.total} {self.unit} done in {clock(elapsed)}"
        pace = (f"{clock(elapsed / self.timed * (self.total - self.done))} left" if self.timed
                else "time left known after the first one trained")
        return f"{self.done}/{self.total} {self.unit} done · {clock(elapsed)} elapsed, {pace}"


def then(first: Callable, second: Optional[Callable]) -> Callable:
    """One callback that calls first, then second (if any)."""
    if second is None:
        return first

    def both(report) -> None:
        first(report)
        second(report)
    return both
