"""Marked sections of a Markdown file that a command rewrites, never a person:

    <!-- report:label-ablation -->
    ...whatever `layerwise report label-ablation --into FILE` wrote last...
    <!-- /report -->

The opening marker names the section (a pipeline, or any label without '>'); everything between
it and the next closing marker is replaced, the markers themselves and the rest of the file kept.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from layerwise.errors import ReportError

OPEN = re.compile(r"^<!-- report:(?P<label>[^>]+?) -->[ \t]*$", re.MULTILINE)
CLOSE = "<!-- /report -->"


class SectionError(ReportError):
    """The file has no such section, or a section is not closed (bad input)."""


def labels(text: str) -> list[str]:
    return [m.group("label").strip() for m in OPEN.finditer(text)]


def section(text: str, label: str) -> str:
    """The body of section `label` (between its markers)."""
    start, end = _span(text, label, "<text>")
    return text[start:end]


def _span(text: str, label: str, where: str) -> tuple[int, int]:
    found = [m for m in OPEN.finditer(text) if m.group("label").strip() == label]
    if not found:
        known = ", ".join(labels(text)) or "none"
        raise SectionError(f"{where}: no section marked <!-- report:{label} --> (its sections: {known})")
    if len(found) > 1:
        raise SectionError(f"{where}: section report:{label} is marked {len(found)} times")
    start = found[0].end() + 1  # after the marker's newline
    end = text.find(CLOSE, start)
    following = OPEN.search(text, start)
    if end < 0 or (following and following.start() < end):
        raise SectionError(f"{where}: section report:{label} has no closing {CLOSE} before the next section")
    return start, end


def rewrite(text: str, label: str, body: str, where: str = "<text>") -> str:
    start, end = _span(text, label, where)
    return text[:start] + body.rstrip("\n") + "\n" + text[end:]


def rewrite_file(path: Path | str, label: str, body: str) -> None:
    """Section `label` of the file at path replaced by body; the file is replaced whole (a reader
    never sees half of it)."""
    path = Path(path)
    if not path.is_file():
        raise SectionError(f"{path}: no such file to write section report:{label} into")
    updated = rewrite(path.read_text(), label, body, str(path))
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(updated)
    os.replace(tmp.name, path)
