"""Bad-input errors, importable without torch: the CLI catches them (exit 2) before it imports the core."""
from __future__ import annotations


class DataError(RuntimeError):
    """Missing or corrupt input data; the message says where the files are expected."""
