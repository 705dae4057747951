"""Bad-input errors, importable without torch: the CLI catches them (exit 2) before it imports the core."""
from __future__ import annotations


class DataError(RuntimeError):
    """Missing or corrupt input data; the message says where the files are expected."""


class Pruned(Exception):
    """Raised from a training loop's callback to stop a sweep trial whose validation curve is not
    worth finishing (the sweep's pruner decided): its runs end KILLED, the trial PRUNED."""


class ReportError(ValueError):
    """A report's store, experiment or run, a claims file or a docs section that cannot be used;
    the message names it."""
