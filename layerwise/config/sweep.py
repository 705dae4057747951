"""The `sweep:` block: a search over a pipeline's knobs, judged on validation only.

    sweep:
      trials: 20
      objective: val_accuracy          # classifier (maximised); val_sq_error for an unroll (minimised)
      sampler: tpe                     # tpe, random or grid
      space:
        finetune.lr: {log_uniform: [0.01, 1.0]}
        layers.*.l1: {uniform: [0.0, 0.1]}     # '*': every item of the list, one value for all
        finetune.epochs: {int: [10, 40]}
        finetune.optimizer: {choice: [sgd, adam]}

A space key is any key `--set` accepts. Checking a space means applying each range's ends (and each
choice) to the pipeline as `--set` would and validating the result: loading.check_sweep_space.
"""
from __future__ import annotations

import builtins
import json
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from layerwise.config.errors import ConfigError
from layerwise.config.base import Seed, Strict

Objective = Literal["val_accuracy", "val_sq_error"]
MAXIMISE = {"val_accuracy": True, "val_sq_error": False}
# what a trial cannot change: the data every trial is judged on, and what a trial does not run
FIXED_PREFIXES = ("data", "sweep", "schedule", "ablation", "retrieval", "description", "variant")


class Range(Strict):
    """Exactly one of: uniform [low, high], log_uniform [low, high] (low > 0), int [low, high]
    (inclusive), choice [a, b, ...]."""
    uniform: Optional[list[float]] = Field(None, min_length=2, max_length=2)
    log_uniform: Optional[list[float]] = Field(None, min_length=2, max_length=2)
    int: Optional[list[builtins.int]] = Field(None, min_length=2, max_length=2)  # the key users write
    choice: Optional[list[Any]] = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self):
        given = [kind for kind in ("uniform", "log_uniform", "int", "choice") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, log_uniform, int or choice")
        if self.kind != "choice":
            low, high = self.bounds
            if not low < high:
                raise ValueError(f"{self.kind} [{low}, {high}] is an empty range (low must be below high)")
            if self.kind == "log_uniform" and low <= 0:
                raise ValueError(f"log_uniform [{low}, {high}] needs low > 0")
        elif len({json.dumps(c, sort_keys=True) for c in self.choice}) != len(self.choice):
            raise ValueError(f"choice {self.choice} repeats a value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "log_uniform", "int", "choice") if getattr(self, k) is not None)

    @property
    def bounds(self) -> list:
        return getattr(self, self.kind)

    @property
    def numeric(self) -> bool:
        return self.kind != "choice"

    def contains(self, value: Any) -> bool:
        """Whether value is one this range can draw."""
        if self.kind == "choice":
            return any(json.dumps(value, sort_keys=True) == json.dumps(c, sort_keys=True) for c in self.choice)
        if isinstance(value, bool) or not isinstance(value, (builtins.int, float)):
            return False
        if self.kind == "int" and value != builtins.int(value):
            return False
        low, high = self.bounds
        return low <= value <= high

    def probes(self) -> list:
        """The values that decide whether the range fits its key: both ends, or every choice."""
        return list(self.bounds)

    def grid(self) -> list:
        """The points a grid search visits: the choices, or every integer of an int range."""
        if self.kind == "choice":
            return list(self.choice)
        if self.kind == "int":
            return list(range(self.int[0], self.int[1] + 1))
        raise ValueError(f"a grid cannot enumerate {self.kind} {self.bounds}: use choice or int")


class SweepConfig(Strict):
    space: dict[str, Range] = Field(..., min_length=1, description="dotted key (any --set key; '*' for every "
                                                                   "list item) -> uniform, log_uniform, int or choice")
    trials: int = Field(..., ge=1, le=10_000, description="finished trials the sweep ends with (pruned included)")
    objective: Optional[Objective] = Field(None, description="val_accuracy (a classifier, maximised) or val_sq_error "
                                                             "(an unroll, minimised); default: the pipeline's kind")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="Optuna's TPE, random search, or every "
                                                                         "point of a grid of choice/int ranges")
    seed: Seed = Field(0, description="the sampler's seed")
    startup_trials: Optional[int] = Field(None, ge=1, description=(
        "TPE: finished trials drawn at random before it models the results (Optuna's n_startup_trials, "
        "default 10; a short sweep wants fewer). Changing it keeps the study: it only decides how the "
        "next trials are drawn"))
    pruning: bool = Field(False, description="stop a trial early when its per-epoch validation metric is below "
                                             "the median of earlier trials at the same epoch (Optuna's MedianPruner)")
    pruning_warmup: int = Field(2, ge=0, description="epochs every trial runs before it can be pruned (a "
                                                     "long cosine schedule is behind a short one early on)")
    baseline: bool = Field(True, description="the first trial runs the pipeline's own values, where each lies "
                                             "in its range: the search starts from the recipe it improves")
    workers: int = Field(1, ge=1, le=64, description="trials at once (threads in this process)")
    storage: Optional[str] = Field(None, description="Optuna storage URL; default: $LAYERWISE_SWEEP_STORAGE, else "
                                   "optuna.db beside the MLflow store")
    heartbeat: int = Field(10, ge=1, le=3600, description="seconds between the heartbeats a running trial's worker "
                           "writes to the study's database")
    grace_period: int = Field(60, ge=2, le=86_400, description="seconds without a heartbeat after which a trial's "
                              "worker counts as gone (killed, its host down): the trial is failed and asked again")
    final_run: bool = Field(True, description="run the best configuration once more with its test error measured "
                                              "(the only run of the sweep that reads the test split)")
    final_set: dict[str, Any] = Field(default_factory=dict, description=(
        "dotted keys (as --set) the final run changes in the best trial's configuration, e.g. "
        "{data.val_size: 0}: the chosen recipe retrained on the validation images too, nothing "
        "chosen by what it reads from test"))
    search_set: dict[str, Any] = Field(default_factory=dict, description=(
        "dotted keys (as --set) the sweep's trials change in the pipeline as written, e.g. "
        "{data.val_size: 10000, finetune.keep: best_val} where the pipeline ships the chosen recipe "
        "retrained on every labelled image: the trials need a validation split to be judged on"))

    @model_validator(mode="after")
    def _grid_fits(self):
        if self.sampler == "grid":
            size = 1
            for key, rng in self.space.items():
                try:
                    size *= len(rng.grid())
                except ValueError as exc:
                    raise ValueError(f"space.{key}: sampler grid: {exc}") from None
            if self.trials > size:
                raise ValueError(f"sweep.trials is {self.trials} but the grid has {size} points")
        return self

    @model_validator(mode="after")
    def _grace_outlasts_heartbeat(self):
        if self.grace_period <= self.heartbeat:
            raise ValueError(f"grace_period ({self.grace_period} s) must be longer than heartbeat ({self.heartbeat} s): "
                             f"a live worker would count as gone between two heartbeats")
        return self

    @model_validator(mode="after")
    def _startup_is_tpes(self):
        if self.startup_trials is not None and self.sampler != "tpe":
            raise ValueError(f"startup_trials is TPE's random start; sampler {self.sampler} has none")
        return self

    @model_validator(mode="after")
    def _final_set_apart(self):
        for key in self.final_set:
            if key in self.space:
                raise ValueError(f"final_set.{key} is searched by the space: the final run keeps the best value")
            if key.split(".")[0] == "sweep":
                raise ValueError(f"final_set.{key}: the final run has no sweep block to change")
        for key in self.search_set:
            if key in self.space:
                raise ValueError(f"search_set.{key} is searched by the space: each trial draws its own value")
            if key.split(".")[0] == "sweep":
                raise ValueError(f"search_set.{key}: the trials have no sweep block to change")
        return self

    def objective_for(self, is_unroll: bool) -> Objective:
        return self.objective or ("val_sq_error" if is_unroll else "val_accuracy")


def expand_key(key: str, raw: dict) -> list[str]:
    """The dotted keys a space key stands for in raw (the pipeline as written): 'layers.*.l1' ->
    layers.0.l1, layers.1.l1, ...; a key without '*' stands for itself."""
    if "*" not in key.split("."):
        return [key]
    parts = key.split(".")
    star = parts.index("*")
    node: Any = raw
    for part in parts[:star]:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, list) or not node:
        raise ConfigError(f"'{'.'.join(parts[:star])}' is not a list to expand '*' over")
    head, tail = ".".join(parts[:star]), ".".join(parts[star + 1:])
    keys = [f"{head}.{i}" + (f".{tail}" if tail else "") for i in range(len(node))]
    return [expanded for k in keys for expanded in expand_key(k, raw)]


def overrides_for(params: dict[str, Any], raw: dict) -> list[str]:
    """A trial's values as --set strings (JSON values read back unchanged by YAML)."""
    return [f"{dotted}={json.dumps(value)}" for key, value in params.items() for dotted in expand_key(key, raw)]
