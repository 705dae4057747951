"""Exclusive wall-clock accounting: time spent in a function is charged to its category, minus
the time of any timed function it calls (MLflow logging inside a training callback is logging,
not compute)."""
from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict


class Ledger:
    def __init__(self, sticky: tuple[str, ...] = ()) -> None:
        self.sticky = set(sticky)  # what these call stays theirs (torch.save inside MLflow's log_model)
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._local = threading.local()

    def _stack(self) -> list:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def wrap(self, category, fn):
        """category: a name, or a function of the call's (args, kwargs) giving one."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            stack = self._stack()
            if stack and stack[-1][0] in self.sticky:
                return fn(*args, **kwargs)
            now = time.perf_counter()
            if stack:  # pause the caller's clock
                outer = stack[-1]
                self.seconds[outer[0]] += now - outer[1]
            name = category(args, kwargs) if callable(category) else category
            stack.append([name, now])
            self.calls[name] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                cat, started = stack.pop()
                self.seconds[cat] += end - started
                if stack:
                    stack[-1][1] = end  # resume the caller's clock
        return timed

    def patch(self, owner, name: str, category: str) -> None:
        setattr(owner, name, self.wrap(category, getattr(owner, name)))
