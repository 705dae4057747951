"""What every task of one pipeline execution shares: its parent MLflow run, the experiment, the
pipeline's name and the run's scratch folder. One object instead of ids passed by position, and
the one way a task opens its child run."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from mlflow.tracking import MlflowClient

from tasks import tracking


@dataclass(frozen=True)
class ChildRun:
    """A stage's open MLflow run and the client it logs through."""
    mlf: MlflowClient
    id: str

    def params(self, params: dict[str, Any]) -> None:
        tracking.log_params(self.mlf, self.id, params)

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        tracking.log_metrics(self.mlf, self.id, metrics, step)

    def artifact(self, path: Path | str, folder: Optional[str] = None) -> None:
        self.mlf.log_artifact(self.id, str(path), folder)


@dataclass(frozen=True)
class RunContext:
    parent_run_id: str
    experiment_id: str
    pipeline: str
    workdir: Path  # per-run scratch (removed when the run ends); weights live in the store and MLflow

    def inside(self, folder: str) -> "RunContext":
        """The same run with scratch in a subfolder (one per pretraining variant)."""
        return RunContext(self.parent_run_id, self.experiment_id, self.pipeline, self.workdir / folder)

    @contextlib.contextmanager
    def child_run(self, title: str, stage: str, tags: Optional[dict[str, str]] = None,
                  reused_from: Optional[str] = None, link_tag: Optional[str] = None) -> Iterator[ChildRun]:
        """A child of the pipeline's parent run, tagged with the pipeline and stage; a stage reused
        from an earlier run is titled '... (reused)' and linked (link_tag) to the run that did the
        work. It ends FINISHED, FAILED on an error or KILLED on an interrupt: never left RUNNING."""
        mlf = tracking.client()
        tags = {tracking.PIPELINE_TAG: self.pipeline, tracking.STAGE_TAG: stage, **(tags or {})}
        run_id = tracking.start_child_run(mlf, self.experiment_id, title, tags, self.parent_run_id, reused_from,
                                          link_tag)
        with tracking.run_status(mlf, run_id):
            yield ChildRun(mlf, run_id)
