"""What every task of one pipeline execution shares: its parent MLflow run, the experiment, the
pipeline's name and the run's scratch folder. One object instead of ids passed by position, and
the one way a task opens its child run."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from layerwise.errors import Pruned
from tasks import tracking

FOREIGN_RUN_TAG = "layerwise.reused_from_run"
FOREIGN_STORE_TAG = "layerwise.reused_from_store"


@dataclass(frozen=True)
class ChildRun:
    """A stage's open MLflow run and the client it logs through. foreign: it reuses work whose run
    is not in this tracking store, so it must hold the stored files itself (see reuse_link)."""
    mlf: MlflowClient
    id: str
    foreign: bool = False

    def params(self, params: dict[str, Any]) -> None:
        tracking.log_params(self.mlf, self.id, params)

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        tracking.log_metrics(self.mlf, self.id, metrics, step)

    def artifact(self, path: Path | str, folder: Optional[str] = None) -> None:
        self.mlf.log_artifact(self.id, str(path), folder)


def reuse_link(mlf: MlflowClient, meta: dict, link_tag: str) -> tuple[str, dict[str, str], bool]:
    """How a reusing run points at the run that did the work: (the tag naming that run, extra
    tags, whether the reusing run must hold the stored files itself).

    When that run is in this tracking store: link_tag = its id, and the weights stay with it (no
    copy). When it is not (trained under another MLFLOW_TRACKING_URI, or this store was emptied),
    a link tag would point at nothing, so the link tag is left off and the caller logs the stored
    files as the reusing run's own artifacts: as for any run without a link tag, the weights are
    in the run itself. Where they came from is kept as reused_from_run (the run id) and
    reused_from_store (the store it was tracked in). The run id is what decides, not the URI: one
    store reached under two spellings still resolves it, and the link works there."""
    try:
        here = mlf.get_run(meta["run_id"]).info.lifecycle_stage != "deleted"
    except MlflowException:
        here = False
    if here:
        return link_tag, {}, False
    return FOREIGN_RUN_TAG, {FOREIGN_STORE_TAG: str(meta.get("tracking_uri", "unknown"))}, True


@dataclass(frozen=True)
class Trial:
    """A task run as part of a sweep's trial: the test split is not read, no model is registered,
    and each epoch's report also goes to on_epoch (the sweep's pruner)."""
    number: int
    study: str = ""
    params: Optional[dict[str, Any]] = None  # the values drawn for it, by space key
    on_epoch: Optional[Callable] = None


@dataclass(frozen=True)
class PrunedTrial:
    """What a sweep trial's tasks return when the pruner stopped the trial (message: the trial,
    epoch, value and the median it fell below)."""
    message: str


def prunable(fn: Callable) -> Callable:
    """A trial's task (under @task) whose training the pruner may stop: Pruned, raised inside it
    (its runs then end KILLED), comes back as a PrunedTrial in a Prefect state named Pruned, not
    as an exception: Prefect would log an exception's traceback and mark the task Failed, which
    reads as a crash. A pruned trial is not one."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Pruned as exc:
            from prefect.states import Completed

            return Completed(name="Pruned", data=PrunedTrial(str(exc)))
    return run


def outcome_of(returned: Any) -> Any:
    """What a task called directly gave back: a prunable task's Pruned state is returned as the
    state itself (a future's result() unwraps it), here unwrapped to its PrunedTrial."""
    from prefect.states import State

    return returned.result() if isinstance(returned, State) else returned


@dataclass(frozen=True)
class RunContext:
    parent_run_id: str
    experiment_id: str
    pipeline: str
    workdir: Path  # per-run scratch (removed when the run ends); weights live in the store and MLflow
    device: str = "cpu"  # where its tasks compute (a torch device: cpu, cuda:1, mps)

    def inside(self, folder: str) -> "RunContext":
        """The same run with scratch in a subfolder (one per pretraining variant)."""
        return replace(self, workdir=self.workdir / folder)

    def on(self, device: str) -> "RunContext":
        """The same run computing on another device (an ablation cell on the second GPU)."""
        return replace(self, device=device)

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    @contextlib.contextmanager
    def child_run(self, title: str, stage: str, tags: Optional[dict[str, str]] = None,
                  reused: Optional[dict] = None, link_tag: Optional[str] = None) -> Iterator[ChildRun]:
        """A child of the pipeline's parent run, tagged with the pipeline and stage. A stage reused
        from the store (reused: its entry's metadata) is titled '... (reused)' and linked (link_tag)
        to the run that did the work, or marked foreign when that run is not in this tracking store
        (reuse_link). It ends FINISHED, FAILED on an error or KILLED on an interrupt: never left
        RUNNING."""
        from layerwise.machine.device import describe_device

        mlf = tracking.client()
        tags = {tracking.PIPELINE_TAG: self.pipeline, tracking.STAGE_TAG: stage,
                tracking.DEVICE_TAG: describe_device(self.torch_device), **(tags or {})}
        foreign = False
        if reused:
            link_tag, extra, foreign = reuse_link(mlf, reused, link_tag)
            tags.update(extra)
        run_id = tracking.start_child_run(mlf, self.experiment_id, title, tags, self.parent_run_id,
                                          reused and reused["run_id"], link_tag)
        with tracking.run_status(mlf, run_id):
            yield ChildRun(mlf, run_id, foreign)
