"""Reading pipelines.yaml: the file and YAML size guards, `--set` overrides, validation into
PipelineConfig with every error as a ConfigError naming the file, the pipeline and the dotted key."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from layerwise.config.errors import ConfigError, describe_errors
from layerwise.config.schema import PipelineConfig, name_problem
from layerwise.paths import DEFAULT_CONFIG

# What a config may cost to read. pipelines.yaml is ~10 KB and expands to ~2,000 values; these limits
# leave 25-50x room and refuse, before any Python object is built, what would otherwise take minutes
# and gigabytes: a 50 MB file (pure-Python PyYAML composes ~0.5 MB/s, at ~100 bytes of memory per
# byte), or a "billion laughs" of aliases nested in aliases (684 bytes expanding 9^9-fold: the expanded
# values are deep-copied, JSON-dumped and parsed again). 256 KiB keeps the parse itself well under 1 s.
MAX_CONFIG_BYTES = 256 << 10      # the file, checked before parsing
MAX_EXPANDED_NODES = 100_000      # YAML values once every alias is expanded
MAX_EXPANDED_CHARS = 4 << 20      # their scalar characters (one long string aliased many times)
MAX_OVERRIDE_BYTES = 64 << 10     # one --set value (schedule.parameters come in the same way)


def read_pipelines_file(path: Path | str = DEFAULT_CONFIG) -> dict[str, dict]:
    """The raw mapping of pipeline name -> dict, with YAML and shape errors as ConfigError."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)  # never more: a huge file is refused unread
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: the config file is over {MAX_CONFIG_BYTES // 1024} KiB; "
                          f"refusing to parse it (the shipped pipelines.yaml is ~10 KiB)")
    try:
        doc = safe_yaml(data, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise ConfigError(f"{path}{where}: broken YAML: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pipelines"), dict):
        raise ConfigError(f"{path}: expected a top-level 'pipelines:' mapping of name -> pipeline")
    extra = set(doc) - {"pipelines", "definitions"}
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(extra)} (allowed: pipelines, definitions)")
    for name, body in doc["pipelines"].items():
        if name_problem(name):
            raise ConfigError(f"{path}: pipeline {name_problem(name)} (it names a folder, the MLflow "
                              f"experiment and the registered model NAME-classifier)")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: pipeline '{name}': expected a mapping, got {type(body).__name__}")
    return doc["pipelines"]


def safe_yaml(text: str | bytes, where: str) -> Any:
    """yaml.safe_load, refusing (ConfigError naming `where`) a document that would expand beyond
    MAX_EXPANDED_NODES values or MAX_EXPANDED_CHARS characters, before any Python object is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()  # the node graph: an alias is one more edge, not a copy
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Counts the values and scalar characters the node graph expands to, memoised per node so the
    count is linear in the distinct nodes (a billion laughs is counted in milliseconds)."""
    sizes: dict[int, Optional[tuple[int, int]]] = {}  # id(node) -> (values, characters); None: in progress

    def size(node: yaml.Node) -> tuple[int, int]:
        if id(node) in sizes:
            if sizes[id(node)] is None:
                raise ConfigError(f"{where}: line {node.start_mark.line + 1}: an alias refers to a value "
                                  f"that contains it (it would expand forever)")
            return sizes[id(node)]
        sizes[id(node)] = None
        if isinstance(node, yaml.ScalarNode):
            values, chars = 1, len(node.value)
        else:
            children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
            counts = [size(child) for child in children]
            values, chars = 1 + sum(c[0] for c in counts), sum(c[1] for c in counts)
        if values > MAX_EXPANDED_NODES or chars > MAX_EXPANDED_CHARS:
            raise ConfigError(f"{where}: line {node.start_mark.line + 1}: the YAML holds more than "
                              f"{MAX_EXPANDED_NODES:,} values or {MAX_EXPANDED_CHARS >> 20} MiB of text, each "
                              f"alias (*name) counted as the value it repeats; refusing it")
        sizes[id(node)] = (values, chars)
        return values, chars

    size(root)


def apply_overrides(raw: dict, overrides: list[str], where: str) -> dict:
    """Apply `dotted.key=value` overrides (values parsed as YAML) to a copy of raw."""
    result = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: --set expects dotted.key=value, got {item!r}")
        if len(text.encode()) > MAX_OVERRIDE_BYTES:
            raise ConfigError(f"{where}: --set {key}: the value is over {MAX_OVERRIDE_BYTES // 1024} KiB; refusing it")
        try:
            value = safe_yaml(text, f"{where}: --set {key}")
        except yaml.YAMLError:
            raise ConfigError(f"{where}: --set {key}: value {text!r} is not valid YAML") from None
        parts = key.strip().split(".")
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            node = _step(node, part, ".".join(parts[: depth + 1]), where, create=True)
        _assign(node, parts[-1], value, key, where)
    return result


def _step(node, part, dotted, where, create):
    if isinstance(node, list):
        index = _index(node, part, dotted, where)
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: --set {dotted}: {type(node).__name__} has no key {part!r}")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def _assign(node, part, value, dotted, where):
    if isinstance(node, list):
        node[_index(node, part, dotted, where)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"{where}: --set {dotted}: cannot set a key inside a {type(node).__name__}")


def _index(node: list, part: str, dotted: str, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"{where}: --set {dotted}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def validate_pipeline(name: str, raw: dict, source: str = "pipelines.yaml") -> PipelineConfig:
    """raw as a resolved PipelineConfig, its schedule.parameters checked as the scheduled run will apply
    them. (Whether Prefect accepts schedule.cron / schedule.timezone is checked by the CLI, next to
    `serve`: flows.schedules.check_schedules.)"""
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: pipeline '{name}': {describe_errors(exc.errors(), PipelineConfig)}") from None
    if cfg.sweep:
        check_sweep_space(name, raw, cfg.sweep, source)
    if cfg.schedule and cfg.schedule.parameters:
        # a scheduled run must not be the first to find out that its overrides are invalid
        where = f"{source}: pipeline '{name}' schedule.parameters"
        scheduled = {key: value for key, value in raw.items() if key != "schedule"}
        try:
            PipelineConfig.model_validate(apply_overrides(scheduled, cfg.schedule.overrides(), where))
        except ValidationError as exc:
            raise ConfigError(f"{where}: {describe_errors(exc.errors(), PipelineConfig)}") from None
    return cfg


_MISSING = object()


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(tree, list) and part.lstrip("-").isdigit() and -len(tree) <= int(part) < len(tree):
            tree = tree[int(part)]
        elif isinstance(tree, dict) and part in tree:
            tree = tree[part]
        else:
            return _MISSING
    return tree


def check_sweep_space(name: str, raw: dict, sweep, source: str = "pipelines.yaml") -> None:
    """Each key of sweep.space is one `--set` accepts, and its range fits it: both ends of a range
    (every choice) applied to the pipeline validate, a numeric range sits on a number (a whole
    number for int keys). A ConfigError names sweep.space.KEY, before any trial exists."""
    from layerwise.config.sweep import expand_key, overrides_for

    where = f"{source}: pipeline '{name}'"
    base = {key: value for key, value in searched_raw(raw, sweep, where).items() if key != "sweep"}
    try:  # what every trial runs: the pipeline with sweep.search_set
        current = PipelineConfig.model_validate(base).model_dump()
    except ValidationError as exc:
        raise ConfigError(f"{where}: sweep.search_set: {describe_errors(exc.errors(), PipelineConfig)}") from None
    if sweep.final_set:
        label = f"{where}: sweep.final_set"
        try:
            PipelineConfig.model_validate(apply_overrides(base, overrides_for(sweep.final_set, base), label))
        except ValidationError as exc:
            raise ConfigError(f"{label}: {describe_errors(exc.errors(), PipelineConfig)}") from None
    for key, rng in sweep.space.items():
        label = f"{where}: sweep.space.{key}"
        try:
            keys = expand_key(key, base)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        for dotted in keys:
            value = _lookup(current, dotted)
            if not rng.numeric or value is _MISSING or value is None:
                continue  # an unknown key is named by the validation below
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{label}: a {rng.kind} range needs a number, but {dotted} is {value!r}")
            if isinstance(value, int) and rng.kind != "int":
                raise ConfigError(f"{label}: {dotted} takes whole numbers ({value}): use an int range")
        for probe in rng.probes():
            try:
                PipelineConfig.model_validate(apply_overrides(base, [f"{d}={json.dumps(probe)}" for d in keys], label))
            except ValidationError as exc:
                raise ConfigError(f"{label} at {probe!r}: {describe_errors(exc.errors(), PipelineConfig)}") from None


def searched_raw(raw: dict, sweep, where: str) -> dict:
    """The pipeline a sweep's trials start from: raw with sweep.search_set applied (a pipeline that
    ships its chosen recipe retrained on every labelled image gets its validation split back)."""
    from layerwise.config.sweep import overrides_for

    if not sweep.search_set:
        return raw
    return apply_overrides(raw, overrides_for(sweep.search_set, raw), f"{where}: sweep.search_set")


def baseline_values(raw: dict, space: dict) -> Optional[dict[str, Any]]:
    """The pipeline's own value of every space key (defaults included), or None where one lies
    outside its range or a 'layers.*' key's items differ: the point a sweep's first trial runs."""
    from layerwise.config.sweep import expand_key

    base = {key: value for key, value in raw.items() if key != "sweep"}
    current = PipelineConfig.model_validate(base).model_dump()
    values = {}
    for key, rng in space.items():
        found = [_lookup(current, dotted) for dotted in expand_key(key, base)]
        if any(v != found[0] for v in found) or not rng.contains(found[0]):
            return None
        values[key] = found[0]
    return values


def load_raw(name: str, path: Path | str = DEFAULT_CONFIG, overrides: list[str] = ()) -> dict:
    """Pipeline NAME of the file at path as written, with `--set` overrides applied (not validated)."""
    pipelines = read_pipelines_file(path)
    if name not in pipelines:
        raise ConfigError(f"{path}: no pipeline named '{name}' (defined: {', '.join(pipelines) or 'none'})")
    return apply_overrides(pipelines[name], list(overrides), f"{path}: pipeline '{name}'")


def load_pipeline(name: str, path: Path | str = DEFAULT_CONFIG, overrides: list[str] = ()) -> PipelineConfig:
    """Pipeline NAME of the file at path, with `--set` overrides (dotted.key=value) applied."""
    return validate_pipeline(name, load_raw(name, path, overrides), str(path))


def trial_raw(raw: dict, params: dict[str, Any], data: dict, where: str, final_set: Optional[dict] = None) -> dict:
    """A sweep trial's pipeline as written: raw without its sweep block, the trial's values applied
    (a 'layers.*.l1' value to every layer), and the run's checked data block (paths made absolute);
    for the final run, sweep.final_set applied last."""
    from layerwise.config.sweep import overrides_for

    base = {key: value for key, value in raw.items() if key != "sweep"}
    result = apply_overrides(base, overrides_for(params, base), where)
    result["data"] = data
    return apply_overrides(result, overrides_for(final_set, result), where) if final_set else result


def load_all(path: Path | str = DEFAULT_CONFIG) -> dict[str, PipelineConfig]:
    """Validate every pipeline in the file; the first bad one raises."""
    return {name: validate_pipeline(name, raw, str(path)) for name, raw in read_pipelines_file(path).items()}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> {'a.b.0.c': value}, the form MLflow params take."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump()
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
