"""How `layerwise` turns Ctrl-C and SIGTERM into a KeyboardInterrupt that ends the run's MLflow runs
KILLED, and makes sure none is lost on the way."""
from __future__ import annotations

import _thread
import signal
import sys
import threading
from typing import Any

TRAINING_LOOP = "layerwise.train.loop"  # looked up, not imported: the handlers go in before torch loads

INTERRUPTED = threading.Event()  # a Ctrl-C or SIGTERM arrived: whatever the run then raises, it was stopped
ENDED = threading.Event()  # the command has returned: the process is only exiting (its exit handlers run)
_last_signal = [signal.SIGINT]
REDELIVER_AFTER_S = 0.05


def _interrupt(signum, frame):
    """Ctrl-C and SIGTERM end the run as a KeyboardInterrupt, so its runs end KILLED. Prefect turns a
    SIGTERM during a flow into its own TerminationSignal and, once that has unwound its engine, sends
    the signal again: an interrupt already on its way out is not raised a second time (raised inside
    the engine's clean-up it would surface as some other error and the run would exit 1, not 130).
    The training loops' stop request is set too: should the KeyboardInterrupt be swallowed on its
    way (code that catches BaseException and keeps it, as Prefect's Call does in its future), the
    loop still stops at its next batch. Once, in CI, a stage trained on after a SIGINT; where that
    interrupt went was not found in 40 tries since."""
    INTERRUPTED.set()
    _stop_request(set_it=True)
    _last_signal[0] = signum
    in_flight = sys.exc_info()[1]
    # only an interrupt counts as in flight: a CancelledError or GeneratorExit being handled at that
    # moment inside Prefect's machinery must not swallow the user's Ctrl-C
    if isinstance(in_flight, KeyboardInterrupt) or type(in_flight).__name__ == "TerminationSignal":
        return
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_request(set_it: bool) -> None:
    """Sets or clears the training loops' stop request (no loop has run before its module loads)."""
    loop = sys.modules.get(TRAINING_LOOP)
    if loop is not None:
        (loop.stop_requested.set if set_it else loop.stop_requested.clear)()


def _lost_interrupt(unraisable: Any) -> None:
    """sys.unraisablehook: Python runs a signal's handler between any two bytecodes, and where those
    belong to code whose exceptions cannot propagate (a __del__, a callback C code runs, as while
    pydantic builds a model during the imports) the KeyboardInterrupt is printed as 'Exception
    ignored in ...' and dropped: the run went on to its end, 36 s later, in 1 of 100 interrupts of
    benchmarks/interrupt_loop.py. The interrupt is delivered again, quietly, once that code has
    returned: from a thread, a moment later (from the main thread the handler would run at once,
    still inside that code; should it land there again, this hook sends it once more)."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and INTERRUPTED.is_set():
        if not ENDED.is_set():
            threading.Timer(REDELIVER_AFTER_S, _thread.interrupt_main, (_last_signal[0],)).start()
        return
    sys.__unraisablehook__(unraisable)


def install() -> None:
    """The handlers, for the whole command (serve's runner takes SIGTERM over once it has started)."""
    reset()
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the caller ignores Ctrl-C
        signal.signal(signal.SIGINT, _interrupt)
    sys.unraisablehook = _lost_interrupt


def reset() -> None:
    """No interrupt has arrived: the state a command starts from (and a test leaves behind)."""
    ENDED.clear()
    INTERRUPTED.clear()
    _stop_request(set_it=False)


def workers_start() -> None:
    """A grid's cells or a sweep's trials are about to start: a stop request that an earlier grid of
    this process left behind is forgotten, unless it comes from an interrupt of this command."""
    if not INTERRUPTED.is_set():
        _stop_request(set_it=False)


def _exiting(signum, frame) -> None:
    """Ctrl-C or SIGTERM once the command has returned: its runs are ended and its status printed;
    the exit goes on (a KeyboardInterrupt in an exit handler would print a traceback and end the
    process by SIGINT, exit -2, after a run that finished)."""


def exiting() -> None:
    """The command has returned and the process ends now: interrupts no longer interrupt."""
    ENDED.set()
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is _interrupt:
            signal.signal(signum, _exiting)


def forget_exec_interrupt() -> None:
    """CPython 3.11 remembers a KeyboardInterrupt raised inside source run by exec() (dataclasses and
    pydantic build their methods that way while modules import) and, under `python -m`, ends the
    process by SIGINT at exit (status -2) even after the interrupt was handled and 130 returned:
    3 of 100 interrupts of benchmarks/interrupt_loop.py. Running source once more resets it."""
    exec("")  # noqa: S102 - an empty source: only the interpreter's flag changes
