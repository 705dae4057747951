"""Everything a run is checked for before it starts, done once: the config (schema, schedule,
memory estimate), the data (read, checked, and the config bound to what it holds) and the tracking
store. `layerwise run` checks and hands the result to the flow; a run started by `serve` is checked
by the flow itself."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from flows.schedules import check_schedules
from layerwise.config import ConfigError, DataFacts, PipelineConfig, load_raw, searched_raw, validate_pipeline
from layerwise.machine.memory import check_fits
from layerwise.paths import data_root


@dataclass(frozen=True)
class CheckedRun:
    """A run that passed every check: its validated config, its data and the store it logs to."""
    pipeline: str
    cfg: PipelineConfig  # bound to its data: cfg.data.found holds the images' shape, classes and counts
    data_root: str
    fingerprint: str  # of the data (part of every stage's store key)
    tracking_uri: str
    device: str = "cpu"  # cfg.device resolved on this machine (a torch device string)
    raw: dict = field(default_factory=dict)  # the pipeline as written, --set applied (a sweep's trials start from it)


def check_data(pipeline: str, cfg: PipelineConfig, root: Path, allow_download: bool,
               source: str) -> tuple[PipelineConfig, str]:
    """Reads the data (a folder is decoded into its cache) and binds the config to what it holds.
    root: the data root (MNIST, torchvision); source: the pipelines file (a relative data.path is
    its folder's). Raises DataError for bad data, ConfigError where the config does not fit it."""
    if cfg.data.source == "mnist":  # known without decoding: the files' MD5s are the check
        from layerwise.datasets.mnist import ensure_mnist

        return cfg, ensure_mnist(root, allow_download)
    from layerwise.datasets import load_source
    from tasks.data import decode_cache

    if cfg.data.path and not Path(cfg.data.path).expanduser().is_absolute():
        # relative to the pipelines file, like everything it names; logged absolute with the run
        path = str((Path(source).resolve().parent / Path(cfg.data.path).expanduser()).resolve())
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": path})})

    # kept for the run's prepare-data step, which then reads nothing again
    data = load_source(cfg.data, root, decode_cache(), allow_download, log=print, keep=True)
    sizes = data.sizes()
    facts = DataFacts(shape=list(data.shape), classes=data.classes, labelled=sizes["labelled_images"],
                      unlabelled=sizes["unlabelled_images"], test=sizes["test_images"])
    try:
        return cfg.bound_to(facts), data.fingerprint
    except ValueError as exc:  # names the key (data.KEY, layers.N.KEY, finetune.labels, ...)
        raise ConfigError(f"{source}: pipeline '{pipeline}' on {data.what}: {exc}") from None


def check_device(pipeline: str, cfg: PipelineConfig, source: str) -> str:
    """cfg.device on this machine: `device: cuda` where there is no CUDA, or `precision: bf16` on a
    CPU without bf16 matrix instructions, is a ConfigError (exit 2)."""
    from layerwise.machine.device import resolve_device

    try:
        device = resolve_device(cfg.device)
    except ConfigError as exc:
        raise ConfigError(f"{source}: pipeline '{pipeline}': {exc}") from None
    if device.type == "cpu" and cfg.precision == "bf16":
        from layerwise.machine.cpu import bf16_problem

        problem = bf16_problem()
        if problem:
            raise ConfigError(f"{source}: pipeline '{pipeline}': precision is 'bf16' but {problem}; "
                              f"use precision: fp32 (or a machine with AMX or AVX512-BF16)")
    return str(device)


def check_run(pipeline: str, config_path: Path | str, overrides: list[str],
              data_root_arg: Optional[str] = None, require_sweep: bool = False) -> CheckedRun:
    """Raises ConfigError or DataError (exit 2) or TrackingError (exit 1) before anything runs.
    The file is read and the pipeline validated here, once; what the run gets is bound to its data.
    Data is downloaded only where no folder was named (no --data-root, no MNIST_ROOT).
    require_sweep: `layerwise sweep`, for which a pipeline without a sweep: block is bad input."""
    raw = load_raw(pipeline, config_path, overrides)
    cfg = validate_pipeline(pipeline, raw, str(config_path))
    if require_sweep and cfg.sweep is None:
        raise ConfigError(f"{config_path}: pipeline '{pipeline}' has no sweep: block to run")
    if require_sweep and cfg.sweep.search_set:  # the trials' pipeline (checked with the space already)
        raw = searched_raw(raw, cfg.sweep, f"{config_path}: pipeline '{pipeline}'")
        cfg = validate_pipeline(pipeline, raw, str(config_path))
    check_schedules({pipeline: cfg}, config_path)
    root = data_root(data_root_arg)
    allow_download = data_root_arg is None and "MNIST_ROOT" not in os.environ
    device = check_device(pipeline, cfg, str(config_path))
    cfg, fingerprint = check_data(pipeline, cfg, root, allow_download, str(config_path))
    check_fits(cfg, pipeline=pipeline, source=str(config_path))
    from tasks.tracking import check_store  # MLflow's import is slow: after the quick checks

    return CheckedRun(pipeline, cfg, str(root), fingerprint, check_store(), device, raw)
