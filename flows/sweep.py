"""`layerwise sweep NAME`: search the knobs of a pipeline's `sweep:` block on validation. Optuna asks
for each trial's values, the trial runs the pipeline with them (lower stages reused from the stage
store, the test split never read) as a run nested under the sweep's parent, and the study is
stored, so a killed sweep started again continues it. The best configuration then runs once more
with its test error measured (the sweep's final run) and is written out as best.yaml."""
from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import optuna
from mlflow.entities import RunStatus
from optuna.trial import TrialState
from prefect import flow, runtime

from flows import interrupts
from flows.ablation import stop_workers
from flows.checks import CheckedRun
from flows.pipeline import execute
from layerwise.config import ConfigError, baseline_values, trial_raw, validate_pipeline
from layerwise.config.sweep import MAXIMISE
from layerwise.errors import Pruned
from layerwise.paths import work_root
from layerwise.report.search import (DIED_ATTR, PROCESS_ATTR, Heartbeat, ask, best_trial, counted_trials, finished,
                              last_finished, make_storage, mark_running, median_at, open_study, plot_history, plot_importance,
                              recover, running, shown_storage, stale_retried, study_lock, study_name, suggest,
                              trials_table)
from tasks import tracking
from tasks.context import PrunedTrial, RunContext, Trial
from tasks.data import prepare_data
from tasks.logs import Countdown, run_logger
from tasks.report import publish_report
from tasks.runs import NOTE_TAG, scratch_in_use, system_metrics
from tasks.uninterrupted import interrupts_held
from tasks.sweep import FINAL_SET_TAG, FINAL_TAG, KIND_TAG, STUDY_TAG, best_yaml, default_storage, end_trial_runs, \
    open_sweep_run, record_sweep, run_trial

POLL_S = 0.2  # how often the sweep looks for a finished trial
WAIT_S = 2.0  # how often a worker with a free slot looks at the study (others' trials ending, a dead one's)


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
    sweep = cfg.sweep.model_dump(exclude={"trials", "workers", "storage", "final_run", "final_set", "startup_trials",
                                          "heartbeat", "grace_period"})
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
    """Runs pipeline NAME's sweep to sweep.trials finished trials (continuing its stored study, beside
    any other worker running it), then the best configuration once with its test error measured."""
    cfg, sweep, raw = checked.cfg, checked.cfg.sweep, checked.raw  # read and checked once, by check_run
    objective = sweep.objective_for(cfg.unroll is not None)
    study_id = study_name(pipeline, _study_payload(cfg, raw))
    url = sweep.storage or default_storage()
    storage = make_storage(sweep, url)
    study = open_study(sweep, study_id, storage, MAXIMISE[objective],
                       baseline_values(raw, sweep.space) if sweep.baseline else None)
    with study_lock(storage, study_id):  # two workers starting at once: one parent run
        parent = open_sweep_run(pipeline, cfg, study_id, url, objective, checked.device,
                                str(runtime.flow_run.id or ""))
    run = RunContext(parent["run_id"], parent["experiment_id"], pipeline,
                     work_root() / "runs" / f"{parent['run_id']}-{uuid.uuid4().hex[:6]}", checked.device)
    log = run_logger()
    mlf = tracking.client()
    try:
        # the parent's system metrics are the first worker's (several would write the same steps)
        with scratch_in_use(run.workdir), _shared_parent(mlf, study, run.parent_run_id), \
                system_metrics(run.parent_run_id, 0 if parent["joined"] else cfg.system_metrics):
            with study_lock(storage, study_id):
                _take_stock(study, run)
            done, others = finished(study), len(running(study))
            log.info(f"study {study_id} in {shown_storage(url)}: {done} of {sweep.trials} trials finished"
                     + (" (joined the workers running it" + (f": {others} trial(s) running)" if others else ")")
                        if parent["joined"] else " (resumed)" if parent["resumed"] else ""))
            data = prepare_data(checked.data_root, cfg.data, str(run.workdir))
            told = _run_trials(study, storage, run, raw, checked, config_path, data, objective)
            last = last_finished(study)
            if done < sweep.trials and last is not None and last.number not in told:
                log.info(f"the study has its {sweep.trials} trials; the worker that told the last one (trial "
                         f"{last.number}, process {last.user_attrs.get(PROCESS_ATTR)}) writes the summary and "
                         f"runs the final run (if it dies first, run this command again)")
                return SweepResult(pipeline, run.parent_run_id, run.experiment_id, study_id, objective, _rows(study),
                                   *_best(study))
            mlf.set_tag(run.parent_run_id, tracking.PROCESS_TAG, tracking.this_process())  # the concluding worker's
            result = _conclude(study, run, raw, checked, objective, study_id)
            publish_report(run.parent_run_id, pipeline)  # the trials, the best and the final run
            mlf.set_terminated(run.parent_run_id, RunStatus.to_string(RunStatus.FINISHED))
            return result
    finally:
        shutil.rmtree(run.workdir, ignore_errors=True)


@contextlib.contextmanager
def _shared_parent(mlf, study, run_id: str) -> Iterator[None]:
    """The sweep's parent run is shared by its workers. One that fails or is stopped while others
    still run trials hands the parent to one of them (it stays RUNNING: neither this worker's
    interrupt handling nor a stale-run check ends it); the last one ends it FAILED or KILLED, as
    tracking.run_status ends any run. FINISHED is the concluding worker's to write."""
    try:
        yield
    except BaseException:
        me = tracking.this_process()
        owners = [t.user_attrs.get(PROCESS_ATTR, "") for t in running(study)]
        other = next((o for o in owners if o and o != me and tracking.process_alive(o)), None)
        if other:
            mlf.set_tag(run_id, tracking.PROCESS_TAG, other)
            raise
        with tracking.run_status(mlf, run_id, finish=False):
            raise  # ended FAILED (an error) or KILLED (an interrupt)


def _take_stock(study, run: RunContext) -> None:
    """Under the study lock: the trials of workers that died (here or, by their heartbeats, on
    any host) or were interrupted are failed and asked again, their MLflow runs end KILLED, and
    the parent is owned by a live worker (this one) again."""
    again = recover(study, tracking.process_alive)
    if not again:
        return
    run_logger().warning(f"trial(s) {', '.join(map(str, again))} did not finish (their process died or was "
                         f"interrupted): marked FAIL and asked again with the same values")
    end_trial_runs(run.experiment_id, study.study_name, again)
    mlf = tracking.client()
    mlf.update_run(run.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    mlf.set_tag(run.parent_run_id, tracking.PROCESS_TAG, tracking.this_process())


def _run_trials(study, storage, run: RunContext, raw: dict, checked: CheckedRun, source: str, data,
                objective: str) -> set[int]:
    """Ask, run and tell until the study has sweep.trials counted trials: sweep.workers at a time
    in this process, beside any other workers on the same study (other shells, other hosts). The
    asking is serialised between them by the study lock, so together they start exactly the
    trials still missing; a worker with nothing left to ask waits for the others' trials (and
    runs a dead worker's again). Returns the numbers of the trials this process told."""
    sweep, log = checked.cfg.sweep, run_logger()
    pending: dict = {}  # future -> (optuna trial, its Heartbeat)
    told: set[int] = set()
    countdown = Countdown(sweep.trials, "trials", finished(study))
    look = 0.0  # when to take stock of the study next (at once after a trial of ours ends)
    interrupts.workers_start()
    try:
        while True:
            if len(pending) < sweep.workers and time.monotonic() >= look:
                # Optuna's sqlite writes, like MLflow's, must not be cut in half
                with interrupts_held(), study_lock(storage, study.study_name):
                    _take_stock(study, run)
                    while len(pending) < sweep.workers and finished(study) + len(running(study)) < sweep.trials:
                        trial = ask(study)
                        mark_running(trial, tracking.this_process())
                        params = suggest(trial, sweep.space)
                        try:
                            cfg, _ = trial_config(run.pipeline, raw, params, checked, source)
                        except ConfigError as exc:  # e.g. a label count the drawn values make impossible
                            study.tell(trial, state=TrialState.FAIL)
                            log.warning(f"trial {trial.number}: {exc} · {countdown.finished(timed=False)}")
                            told.add(trial.number)
                            continue
                        hooks = Trial(trial.number, study.study_name, params,
                                      _pruner_callback(trial, objective) if sweep.pruning else None)
                        beat = Heartbeat(storage, trial._trial_id)
                        future = run_trial.with_options(task_run_name=f"trial-{trial.number}").submit(
                            run, cfg, hooks, data, checked.fingerprint, objective)
                        pending[future] = (trial, beat)
                    if not pending and finished(study) >= sweep.trials:
                        return told
                look = time.monotonic() + WAIT_S
            time.sleep(POLL_S)
            for future in [f for f in pending if f.state.is_final()]:
                trial, beat = pending[future]
                with interrupts_held():
                    _tell(study, trial, future, objective, countdown)
                    beat.stop()
                    told.add(trial.number)
                    del pending[future]  # after it is told: an interrupt meanwhile leaves it to the handler below
                look = 0.0
    except BaseException:
        stop_workers(pending)  # the trials run in worker threads, which no signal reaches
        for trial, beat in pending.values():  # asked again when the sweep resumes, or by another worker
            beat.stop()
            with contextlib.suppress(Exception):  # one another worker failed as stale meanwhile is finished
                study._storage.set_trial_user_attr(trial._trial_id, DIED_ATTR, "interrupted")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise


def _tell(study, trial, future, objective: str, countdown: Countdown) -> None:
    """The trial's outcome to Optuna, and one line: its value (or why it was pruned, or failed),
    the trials done / total and the time left."""
    log = run_logger()
    if study._storage.get_trial(trial._trial_id).state.is_finished():
        # its heartbeats were late past the grace period: another worker failed it and asks it again
        log.warning(f"trial {trial.number} was failed as stale by another worker meanwhile (its heartbeat came "
                    f"late): its result is dropped, the trial is asked again")
        return
    try:
        value = future.result()
    except Exception as exc:  # a diverged or broken trial: counted, the sweep goes on
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        log.warning(f"trial {trial.number} failed: {type(exc).__name__}: {exc} · {countdown.finished()}")
        return
    if isinstance(value, PrunedTrial):
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        log.info(f"{value.message} · {countdown.finished()}")
        return
    study.tell(trial, value, skip_if_finished=True)
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
    states = [t.state for t in counted_trials(study)]
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
                                              checked.tracking_uri, checked.device, checked.raw),
                    parent_of=run.parent_run_id, tags=final_tags, title_suffix=f" · sweep's best (trial {best.number})")
    result.final = final
    test = final.outcome.parent_metrics()
    tracking.log_metrics(mlf, run.parent_run_id, {f"final_{k}": v for k, v in test.items() if k.startswith("test")})
    mlf.set_tag(run.parent_run_id, NOTE_TAG, note + f"- final run, its test split read once: {final.outcome.headline()}\n")
    return result


def _rows(study) -> list[dict]:
    retried = stale_retried(study)
    return [{"number": t.number, "state": t.state.name, "objective": t.value, "params": t.params,
             "died": t.user_attrs.get(DIED_ATTR) or ("heartbeat stopped" if t.number in retried else None)}
            for t in study.get_trials(deepcopy=False)]


def _best(study) -> tuple[Optional[dict], Optional[float]]:
    best = best_trial(study)
    return (best.params, best.value) if best else (None, None)
