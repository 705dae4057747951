"""A sweep's MLflow side: its parent run (found again when the sweep resumes), one nested run per
trial (the trial's stage and fine-tune runs nested under it), and the summary the parent carries:
the best trial's parameters, best.yaml, trials.csv and the figures."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from mlflow.entities import RunStatus
from prefect import task

from layerwise.config import PipelineConfig, cells, flatten, needs_stack
from layerwise.errors import Pruned
from layerwise.machine.device import place
from layerwise.paths import work_root
from layerwise.report.search import shown_storage
from layerwise.store.files import load_inputs
from tasks import tracking
from tasks.context import PrunedTrial, RunContext, Trial, outcome_of, prunable
from tasks.data import DataFiles
from tasks.datasets import log_datasets
from tasks.logs import run_logger
from tasks.runs import NOTE_TAG, experiment_for

KIND_TAG = "layerwise.kind"            # sweep, trial (a sweep's final run: sweep_final)
STUDY_TAG = "layerwise.sweep_study"    # the Optuna study a sweep run, trial or final run belongs to
TRIAL_TAG = "layerwise.trial"          # a trial's number in its study
TRIAL_STATE_TAG = "layerwise.trial_state"
FINAL_TAG = "layerwise.sweep_final"    # "true" on the one run of a sweep that reads the test split
FINAL_SET_TAG = "layerwise.sweep_final_set"  # on the final run: what sweep.final_set changed (JSON)


STORAGE_ENV = "LAYERWISE_SWEEP_STORAGE"  # the team's study database (python -m team up writes it to the env file)


def default_storage() -> str:
    """$LAYERWISE_SWEEP_STORAGE, else Optuna's database beside the MLflow store (a sqlite store's
    folder), else in the workdir."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    db = tracking.sqlite_path(tracking.tracking_uri())
    folder = db.parent if db else work_root()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def sweep_title(pipeline: str, cfg: PipelineConfig, objective: str) -> str:
    return f"{pipeline} · sweep · {cfg.sweep.trials} trials · {objective} ({cfg.sweep.sampler})"


@task(name="open-sweep-run", retries=2, retry_delay_seconds=2)
def open_sweep_run(pipeline: str, cfg: PipelineConfig, study: str, storage: str, objective: str,
                   device: str, flow_run_id: str = "") -> dict[str, Any]:
    """The sweep's parent run: the one this study already has (a resumed sweep: RUNNING again,
    owned by this process; a sweep another worker runs now: joined, its owner kept), else a new
    one with the pipeline's and the sweep's settings as params. Runs a dead process left RUNNING
    (its trial, that trial's stages) end KILLED first."""
    mlf = tracking.client()
    experiment_id = experiment_for(mlf, pipeline)
    found = mlf.search_runs([experiment_id], f"tags.`{STUDY_TAG}` = '{study}' and tags.`{KIND_TAG}` = 'sweep'",
                            order_by=["attributes.start_time ASC"], max_results=1)
    title = sweep_title(pipeline, cfg, objective)
    if found:
        run = found[0]
        owner = run.data.tags.get(tracking.PROCESS_TAG, "")
        joined = run.info.status == "RUNNING" and owner != tracking.this_process() and tracking.process_alive(owner)
        if not joined:
            mlf.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING), name=title)
            mlf.set_tag(run.info.run_id, tracking.PROCESS_TAG, tracking.this_process())
        mlf.set_tag(run.info.run_id, "layerwise.sweep_trials", str(cfg.sweep.trials))
        return {"run_id": run.info.run_id, "experiment_id": experiment_id, "resumed": True, "joined": joined}
    tags = {tracking.PIPELINE_TAG: pipeline, tracking.DEVICE_TAG: device, KIND_TAG: "sweep", STUDY_TAG: study,
            "layerwise.sweep_trials": str(cfg.sweep.trials), "layerwise.sweep_storage": shown_storage(storage)}
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    run_id = tracking.start_run(mlf, experiment_id, title, tags)
    with tracking.run_status(mlf, run_id, finish=False):
        space = {mlflow_key(key): {kind: bound for kind, bound in rng.model_dump().items() if bound is not None}
                 for key, rng in cfg.sweep.space.items()}
        tracking.log_params(mlf, run_id, {**flatten(cfg.model_dump(exclude={"sweep"})),
                                          **flatten(cfg.sweep.model_dump(exclude={"trials", "workers", "space", "storage"}),
                                                    "sweep"),  # the storage (its password masked) is a tag
                                          **flatten(space, "sweep.space"), "sweep.objective": objective,
                                          "sweep.study": study})
    return {"run_id": run_id, "experiment_id": experiment_id, "resumed": False, "joined": False}


def end_trial_runs(experiment_id: str, study: str, numbers: list[int]) -> list[str]:
    """The MLflow runs of trials whose worker died (on any host: found by the study's heartbeats),
    left RUNNING: the trial's run and every run under it end KILLED."""
    mlf = tracking.client()
    running = mlf.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
    dead = {str(n) for n in numbers}
    ended = {r.info.run_id for r in running if r.data.tags.get(STUDY_TAG) == study
             and r.data.tags.get(KIND_TAG) == "trial" and r.data.tags.get(TRIAL_TAG) in dead}
    while True:  # their stage and fine-tune runs, nested any depth
        below = {r.info.run_id for r in running if r.data.tags.get(tracking.PARENT_TAG) in ended} - ended
        if not below:
            break
        ended |= below
    for run_id in ended:
        mlf.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    return sorted(ended)


def trial_inputs(data: DataFiles, device: torch.device) -> dict[str, torch.Tensor]:
    """What a trial trains and is judged on: the training and validation splits (never the test split)."""
    return place(load_inputs(data.inputs, ("train", "val")), device, log=run_logger().info)


@task(name="sweep-trial")
@prunable
def run_trial(sweep_run: RunContext, cfg: PipelineConfig, trial: Trial, data: DataFiles, fingerprint: str,
              objective: str) -> float:
    """One trial: the pipeline with the trial's values (cfg), tracked as a run nested under the
    sweep's parent (its stage runs and its fine-tune or unroll run nested under the trial's), judged
    on validation; returns the objective. Lower stages an earlier trial (or run) trained are reused
    from the stage store. Returns a PrunedTrial when the pruner stops it (trial.on_epoch decides):
    its run ends KILLED, tagged PRUNED."""
    from tasks.finetune import cell_key, finetune
    from tasks.pretrain import StackFiles, pretrain_stack_tracked
    from tasks.unroll import unroll_finetune

    mlf = tracking.client()
    tags = {tracking.PIPELINE_TAG: sweep_run.pipeline, tracking.STAGE_TAG: "trial", KIND_TAG: "trial",
            TRIAL_TAG: str(trial.number), STUDY_TAG: trial.study, tracking.DEVICE_TAG: sweep_run.device}
    number, params = trial.number, trial.params or {}
    title = f"trial {number} · " + ", ".join(f"{key}={_short(value)}" for key, value in params.items())
    run_id = tracking.start_run(mlf, sweep_run.experiment_id, title[:250], tags, sweep_run.parent_run_id)
    with tracking.run_status(mlf, run_id):
        try:
            tracking.log_params(mlf, run_id, {**{f"trial.{mlflow_key(key)}": value for key, value in params.items()},
                                              **flatten(cfg.model_dump(exclude={"sweep"}))})
            log_datasets(mlf, run_id, data.source_uri, data.datasets("training", "validation"))
            run = RunContext(run_id, sweep_run.experiment_id, sweep_run.pipeline,
                             sweep_run.workdir / f"trial-{number}", sweep_run.device)
            stack = StackFiles()
            if needs_stack(cfg):
                stack, _ = pretrain_stack_tracked(cfg, run, trial_inputs(data, run.torch_device), fingerprint)
            if cfg.unroll:
                outcome = outcome_of(unroll_finetune.with_options(task_run_name=f"unroll-trial-{number}")(
                    run, cfg, data, stack, trial))
            else:
                (cell,) = cells(cfg)  # its fine-tune settings in force
                key = cell_key(cell, list(stack.keys), fingerprint, kind="trial-cell")
                outcome = outcome_of(finetune.with_options(task_run_name=f"finetune-trial-{number}")(
                    run, cell, data, list(stack.weights), None, key, False, trial))
            if isinstance(outcome, PrunedTrial):  # the trial's run ends KILLED too
                raise Pruned(outcome.message)
            value = outcome.val_sq_error if cfg.unroll else outcome.kept_val_accuracy
            if value is None:
                raise RuntimeError(f"trial {number}: no {objective} was measured")
            tracking.log_metrics(mlf, run_id, {objective: value})
            mlf.set_tag(run_id, TRIAL_STATE_TAG, "COMPLETE")
        except Pruned:
            mlf.set_tag(run_id, TRIAL_STATE_TAG, "PRUNED")
            raise
        except Exception:
            mlf.set_tag(run_id, TRIAL_STATE_TAG, "FAIL")
            raise
    return value


def mlflow_key(key: str) -> str:
    """A space key as MLflow names allow it: 'layers.*.l1' -> 'layers.each.l1'."""
    return key.replace("*", "each")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@task(name="record-sweep", retries=2, retry_delay_seconds=2)
def record_sweep(run_id: str, table_csv: str, figures: list[Path], best: Optional[dict], best_yaml: Optional[str],
                 metrics: dict[str, float], note: str = "") -> None:
    """The parent's summary, rewritten as the sweep goes: trials.csv, the figures, the best trial's
    parameters (as tags `best.KEY`: a resumed sweep's best may change, which params cannot) and
    best.yaml, and the counts and best objective as metrics."""
    mlf = tracking.client()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "trials.csv"
        csv.write_text(table_csv)
        mlf.log_artifact(run_id, str(csv))
        if best_yaml:
            path = Path(tmp) / "best.yaml"
            path.write_text(best_yaml)
            mlf.log_artifact(run_id, str(path))
    for figure in figures:
        mlf.log_artifact(run_id, str(figure), "figures")
    for key, value in (best or {}).items():
        mlf.set_tag(run_id, f"best.{mlflow_key(key)}", str(value))
    tracking.log_metrics(mlf, run_id, metrics)
    if note:
        mlf.set_tag(run_id, NOTE_TAG, note)


def best_yaml(pipeline: str, raw: dict, final_set: Optional[dict] = None) -> str:
    """A complete pipelines file holding the best trial's pipeline, as the final run ran it (with
    sweep.final_set): `layerwise run --config best.yaml`."""
    header = (f"# The best trial of `layerwise sweep {pipeline}` (chosen on validation)"
              + (f", then {json.dumps(final_set)} (sweep.final_set)" if final_set else "")
              + ": run it with\n#   layerwise run --config best.yaml\n")
    return header + yaml.safe_dump({"pipelines": {pipeline: raw}}, sort_keys=False)
