"""ConfigError and the wording of pydantic's errors: one phrase per offending dotted key.

Every problem with a config is raised as a ConfigError whose message names the file, the pipeline
and the dotted key; describe_errors turns pydantic's error list into that key-by-key phrasing.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel


class ConfigError(ValueError):
    """A pipelines.yaml problem; the message is meant for the user as is."""


_TYPE_TAGS = {"int", "float", "str", "bool", "none", "list", "dict"}


def _field_path(loc: tuple) -> tuple:
    """The loc without pydantic's union-member tags ('int', "literal['all']", ...)."""
    return tuple(part for part in loc
                 if isinstance(part, int) or ("[" not in part and part not in _TYPE_TAGS))


def describe_errors(errors: list[dict], model: type[BaseModel]) -> str:
    """One phrase per offending key; alternatives of a union are joined with 'or'.

    errors are pydantic's (ValidationError.errors()) or dicts of the same shape: type, loc, msg, input."""
    grouped: dict[tuple, list[str]] = {}
    for err in errors:
        path = _field_path(err["loc"])
        grouped.setdefault(path, [])
        text = _describe(err, path, model)
        if text not in grouped[path]:
            grouped[path].append(text)
    phrases = []
    for path, texts in grouped.items():
        key = ".".join(str(part) for part in path)
        got = next((f" (got {e['input']!r})" for e in errors if _field_path(e["loc"]) == path
                    and e["type"] not in ("extra_forbidden", "missing") and "input" in e
                    and not isinstance(e["input"], (dict, list)) and e["loc"]), "")
        body = " or ".join(texts) + got
        phrases.append(f"{key}: {body}" if key else body)
    return "; ".join(phrases)


def _describe(err: dict, path: tuple, model: type[BaseModel]) -> str:
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, path[:-1])
        return "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if err["type"] == "missing":
        return "required key is missing"
    return err["msg"].removeprefix("Value error, ")


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a nested model accepts at loc (list indices skipped)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
