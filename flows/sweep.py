"""`layerwise sweep NAME`: search the knobs of a pipeline's `sweep:` block on validation. Optuna asks
for each trial's values, the trial runs the pipeline with them (lower stages reused from the stage
store, the test split never read) as a run nested under the sweep's parent, and the study is
stored, so a killed sweep started again continues it. The best configuration then runs once more
with its test error measured (the sweep's final run) and is written out as best.yaml."""
from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import optuna
from optuna.trial import TrialState
from prefect import flow, runtime

from flows.ablation import stop_workers
from flows.checks import CheckedRun
from flows.pipeline import execute
from layerwise import training
from layerwise.config import ConfigError, baseline_values, load_raw, trial_raw, validate_pipeline
from layerwise.config.sweep import MAXIMISE
from layerwise.errors import Pruned
from layerwise.paths import work_root
from layerwise.search import (DIED_ATTR, best_trial, counted, finished, mark_running, median_at, open_study,
                              plot_history, plot_importance, recover, study_name, suggest, trials_table)
from tasks import tracking
from tasks.context import PrunedTrial, RunContext, Trial
from tasks.data import prepare_data
from tasks.logs import Countdown, run_logger
from tasks.runs import NOTE_TAG, system_metrics
from tasks.uninterrupted import interrupts_held
from tasks.sweep import FINAL_SET_TAG, FINAL_TAG, KIND_TAG, STUDY_TAG, best_yaml, default_storage, open_sweep_run, record_sweep, \
    run_trial

POLL_S = 0.2  # how often the sweep looks for a finished trial


@dataclass
class SweepResult:
    pipeline: str
    parent_run_id: str
    experiment_id: str
    study: str
    objective: str
    trials: list[dict]                # one row per trial: number, state, objective, params
    best: Optional[dict] = None       # the best trial's values
    best_value: Optional[float] = None
    final: Any = None                 # the final run's RunResult (test measured once), if it ran
    retrieval: dict = field(default_factory=dict)

    def headline(self) -> str:
        counts = {state: sum(row["state"] == state and not row["died"] for row in self.trials)
                  for state in ("COMPLETE", "PRUNED", "FAIL")}
        line = f"sweep {self.study}: {sum(counts.values())} trials ({counts['COMPLETE']} complete, " \
               f"{counts['PRUNED']} pruned, {counts['FAIL']} failed)"
        if self.best is not None:
            line += f"; best {self.objective} {self.best_value:.4f} with " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.best.items())
        if self.final is not None:
            line += f"\nfinal run (the best configuration, test measured once): {self.final.headline()}"
        return line


def _study_payload(cfg, raw: dict) -> dict:
    """What decides the study: the pipeline as written (minus the sweep's run settings) and the search
    (minus how many of the trials still to come are drawn at random)."""
    sweep = cfg.sweep.model_dump(exclude={"trials", "workers", "storage", "final_run", "final_set", "startup_trials"})
    return {"pipeline": {k: v for k, v in raw.items() if k != "sweep"}, "sweep": sweep}


def trial_config(pipeline: str, raw: dict, params: dict, checked: CheckedRun, source: str,
                 final_set: Optional[dict] = None):
    """The trial's PipelineConfig, bound to the run's data (validated like the file); with
    final_set, the final run's (sweep.final_set applied to the trial's)."""
    where = f"{source}: pipeline '{pipeline}' (sweep trial {params})"
    written = trial_raw(raw, params, checked.cfg.data.model_dump(exclude={"found"}), where, final_set)
    return validate_pipeline(pipeline, written, source).bound_to(checked.cfg.data.found), written


def _pruner_callback(trial: optuna.Trial, objective: str):
    """Reports each epoch's validation metric to Optuna; raises Pruned when the pruner says stop,
    saying why in one line: the median rule stops a trial whose best value so far trails the
    median of the finished trials at the same epoch."""
    maximise = trial.study.direction == optuna.study.StudyDirection.MAXIMIZE
    reported: list[float] = []

    def report(epoch_report) -> None:
        value = epoch_report.metrics.get(objective)
        if value is None:
            return
        trial.report(value, epoch_report.epoch)
        reported.append(value)
        if trial.should_prune():
            best = max(reported) if maximise else min(reported)
            median = median_at(trial.study, epoch_report.epoch)
            raise Pruned(f"trial {trial.number} pruned at epoch {epoch_report.epoch}: {objective} {value:.4f}"
                         + (f" (its best so far {best:.4f})" if best != value else "")
                         + (f", {'below' if maximise else 'above'} the median {median:.4f} of the finished "
                            f"trials at epoch {epoch_report.epoch}" if median is not None else ""))
    return report


def _final_done(mlf, experiment_id: str, sweep_run_id: str) -> Optional[str]:
    runs = mlf.search_runs([experiment_id], f"tags.`{FINAL_TAG}` = 'true' and tags.`mlflow.parentRunId` = "
                                            f"'{sweep_run_id}' and attributes.status = 'FINISHED'", max_results=1)
    return runs[0].info.run_id if runs else None


@flow(name="layerwise-sweep", flow_run_name="{pipeline}-sweep", log_prints=True, validate_parameters=False)
def layerwise_sweep(pipeline: str, overrides: list[str], config_path: str, checked: CheckedRun) -> SweepResult:
    """Runs pipeline NAME's sweep to sweep.trials finished trials (continuing its stored study),
    then the best configuration once with its test error measured."""
    cfg, sweep = checked.cfg, checked.cfg.sweep
    raw = load_raw(pipeline, config_path, overrides)
    objective = sweep.objective_for(cfg.unroll is not None)
    study_id = study_name(pipeline, _study_payload(cfg, raw))
    storage = sweep.storage or default_storage()
    study = open_study(sweep, study_id, storage, MAXIMISE[objective],
                       baseline_values(raw, sweep.space) if sweep.baseline else None)
    parent = open_sweep_run(pipeline, cfg, study_id, storage, objective, checked.device,
                            str(runtime.flow_run.id or ""))
    run = RunContext(parent["run_id"], parent["experiment_id"], pipeline,
                     work_root() / "runs" / f"{parent['run_id']}-{uuid.uuid4().hex[:6]}", checked.device)
    log = run_logger()
    mlf = tracking.client()
    try:
        with tracking.run_status(mlf, run.parent_run_id), system_metrics(run.parent_run_id, cfg.system_metrics):
            again = recover(study, tracking.process_alive)
            if again:
                log.warning(f"trial(s) {', '.join(map(str, again))} did not finish (their process died or was "
                            f"interrupted): marked FAIL and asked again with the same values")
            log.info(f"study {study_id} in {storage}: {finished(study)} of {sweep.trials} trials finished"
                     + (" (resumed)" if parent["resumed"] else ""))
            data = prepare_data(checked.data_root, cfg.data, str(run.workdir))
            _run_trials(study, run, raw, checked, config_path, data, objective)
            return _conclude(study, run, raw, checked, objective, study_id)
    finally:
        shutil.rmtree(run.workdir, ignore_errors=True)


def _run_trials(study, run: RunContext, raw: dict, checked: CheckedRun, source: str, data, objective: str) -> None:
    """Ask, run and tell until the study has sweep.trials counted trials, sweep.workers at a time."""
    sweep, log = checked.cfg.sweep, run_logger()
    pending: dict = {}  # future -> optuna trial
    countdown = Countdown(sweep.trials, "trials", finished(study))
    training.stop_requested.clear()
    try:
        while True:
            with interrupts_held():  # Optuna's sqlite writes, like MLflow's, must not be cut in half
                while len(pending) < sweep.workers and finished(study) + len(pending) < sweep.trials:
                    trial = study.ask()
                    mark_running(trial, tracking.this_process())
                    params = suggest(trial, sweep.space)
                    try:
                        cfg, _ = trial_config(run.pipeline, raw, params, checked, source)
                    except ConfigError as exc:  # e.g. a label count the drawn values make impossible
                        study.tell(trial, state=TrialState.FAIL)
                        log.warning(f"trial {trial.number}: {exc} · {countdown.finished(timed=False)}")
                        continue
                    hooks = Trial(trial.number, study.study_name, params,
                                  _pruner_callback(trial, objective) if sweep.pruning else None)
                    future = run_trial.with_options(task_run_name=f"trial-{trial.number}").submit(
                        run, cfg, hooks, data, checked.fingerprint, objective)
                    pending[future] = trial
            if not pending:
                return
            time.sleep(POLL_S)
            for future in [f for f in pending if f.state.is_final()]:
                with interrupts_held():
                    _tell(study, pending[future], future, objective, countdown)
                    del pending[future]  # after it is told: an interrupt meanwhile leaves it to the handler below
    except BaseException:
        stop_workers(pending)  # the trials run in worker threads, which no signal reaches
        for trial in pending.values():  # asked again when the sweep resumes
            study._storage.set_trial_user_attr(trial._trial_id, DIED_ATTR, "interrupted")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise


def _tell(study, trial, future, objective: str, countdown: Countdown) -> None:
    """The trial's outcome to Optuna, and one line: its value (or why it was pruned, or failed),
    the trials done / total and the time left."""
    log = run_logger()
    try:
        value = future.result()
    except Exception as exc:  # a diverged or broken trial: counted, the sweep goes on
        study.tell(trial, state=TrialState.FAIL)
        log.warning(f"trial {trial.number} failed: {type(exc).__name__}: {exc} · {countdown.finished()}")
        return
    if isinstance(value, PrunedTrial):
        study.tell(trial, state=TrialState.PRUNED)
        log.info(f"{value.message} · {countdown.finished()}")
        return
    study.tell(trial, value)
    best = best_trial(study)
    log.info(f"trial {trial.number}: {objective} {value:.4f}; best so far {best.value:.4f} (trial {best.number}) · "
             f"{countdown.finished()}")


def _conclude(study, run: RunContext, raw: dict, checked: CheckedRun, objective: str, study_id: str) -> SweepResult:
    """The parent's summary (table, figures, best.yaml, best values), then the final run."""
    cfg, log = checked.cfg, run_logger()
    best = best_trial(study)
    table = trials_table(study)
    figures = [plot_history(study, objective, run.workdir / "objective-by-trial.png")]
    importance = plot_importance(study, run.workdir / "parameter-importance.png")
    if importance:
        figures.append(importance)
    best_text = best_cfg = None
    if best is not None:
        # what the final run runs and best.yaml holds: the best trial's values, then sweep.final_set
        best_cfg, best_raw = trial_config(run.pipeline, raw, best.params, checked, "best.yaml", cfg.sweep.final_set)
        best_text = best_yaml(run.pipeline, best_raw, cfg.sweep.final_set)
    states = [t.state for t in study.get_trials(deepcopy=False) if counted(t)]
    metrics = {"trials_finished": sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
               "trials_pruned": sum(s == TrialState.PRUNED for s in states),
               "trials_failed": sum(s == TrialState.FAIL for s in states)}
    if best is not None:
        metrics[f"best_{objective}"] = best.value
    note = (f"**{run.pipeline}** sweep, study `{study_id}`: {metrics['trials_finished']} trial(s) finished "
            f"({metrics['trials_pruned']} pruned, {metrics['trials_failed']} failed), judged on {objective} "
            f"(validation)\n\n" + (f"- best: trial {best.number}, {objective} {best.value:.4f}: " + ", ".join(
                f"`{k}` = {v:.4g}" if isinstance(v, float) else f"`{k}` = {v}" for k, v in best.params.items())
                + "\n- `best.yaml` runs it: `layerwise run --config best.yaml`\n" if best else "- no trial finished\n"))
    record_sweep(run.parent_run_id, table.to_csv(index=False), figures, best and best.params, best_text, metrics, note)
    if best is None and metrics["trials_failed"]:
        raise RuntimeError(f"all {metrics['trials_failed']} finished trial(s) of study {study_id} failed: their runs "
                           f"and the log above say why")
    result = SweepResult(run.pipeline, run.parent_run_id, run.experiment_id, study_id, objective,
                         _rows(study), best and best.params, best and best.value)
    if best is None or not cfg.sweep.final_run:
        return result
    mlf = tracking.client()
    done = _final_done(mlf, run.experiment_id, run.parent_run_id)
    final_tags = {KIND_TAG: "sweep_final", FINAL_TAG: "true", STUDY_TAG: study_id,
                  "layerwise.sweep_best_trial": str(best.number),
                  FINAL_SET_TAG: json.dumps(cfg.sweep.final_set, sort_keys=True)}
    previous = mlf.get_run(done).data.tags if done else {}
    if done and previous.get("layerwise.sweep_best_trial") == str(best.number) \
            and previous.get(FINAL_SET_TAG, "{}") == final_tags[FINAL_SET_TAG]:
        log.info(f"the final run of trial {best.number}'s configuration is done already: MLflow run {done}")
        return result
    log.info(f"final run: trial {best.number}'s configuration" + (
        f" with {cfg.sweep.final_set}" if cfg.sweep.final_set else "") + ", its test error measured once")
    final = execute(run.pipeline, CheckedRun(run.pipeline, best_cfg, checked.data_root, checked.fingerprint,
                                              checked.tracking_uri, checked.device),
                    parent_of=run.parent_run_id, tags=final_tags, title_suffix=f" · sweep's best (trial {best.number})")
    result.final = final
    test = final.outcome.parent_metrics()
    tracking.log_metrics(mlf, run.parent_run_id, {f"final_{k}": v for k, v in test.items() if k.startswith("test")})
    mlf.set_tag(run.parent_run_id, NOTE_TAG, note + f"- final run, its test split read once: {final.outcome.headline()}\n")
    return result


def _rows(study) -> list[dict]:
    return [{"number": t.number, "state": t.state.name, "objective": t.value, "params": t.params,
             "died": t.user_attrs.get(DIED_ATTR)} for t in study.get_trials(deepcopy=False)]
