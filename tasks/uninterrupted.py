"""Store calls an interrupt cannot cut in half.

Python runs a signal's handler in the main thread between any two bytecodes, so Ctrl-C (our
KeyboardInterrupt) or SIGTERM (Prefect's TerminationSignal during a flow) can land inside a
sqlite write after its row was sent, and again inside SQLAlchemy's clean-up of it: the
connection then keeps the database's write lock until it is garbage-collected, and every call
that tries to end the runs KILLED waits out sqlite's 20 s timeout and fails
(tests/test_uninterrupted.py does exactly that; tests/test_interrupt.py's rare 61-81 s exits
showed the same "database is locked"). Here the interrupt waits for the call to return and is
raised right after it, by the handler that was installed.
"""
from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Any, Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM arriving inside the block are delivered when it ends: the first of them,
    once (a second Ctrl-C must not cut the call either; a sqlite call ends within its 20 s
    timeout). Handlers run only in the main thread, so elsewhere (a worker thread's trial or cell)
    nothing needs holding."""
    global _holding
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HELD_SIGNALS}
    arrived: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        arrived.append(signum)

    for signum in HELD_SIGNALS:
        signal.signal(signum, hold)
    _holding = True
    try:
        yield
    finally:
        _holding = False
        _restore(previous)
        if arrived:
            _deliver(previous, arrived[0], None)


_holding = False  # the main thread is inside interrupts_held (a store call made by a store call)


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _deliver(previous: dict, signum: int, frame: Any) -> None:
    """What the handler installed before the block does with this signal."""
    handler = previous[signum]
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


class UninterruptedClient:
    """An MlflowClient whose every call runs with interrupts held (a sqlite store's calls take
    milliseconds; a server's are not wrapped, since its retries can take a minute and hold no lock)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def held(*args: Any, **kwargs: Any) -> Any:
            with interrupts_held():
                return attr(*args, **kwargs)
        return held
