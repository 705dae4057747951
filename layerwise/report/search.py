"""A sweep's search, on Optuna: the study (stored, so a killed sweep resumes, and shared by every
worker that runs the same sweep, here or on other hosts), what each trial draws from the
`sweep:` block's space, recovery of the trials a dead worker left running, and the study's table
and figures. No tracker and no orchestrator: flows/sweep.py runs the trials.

    storage = make_storage(sweep, "sqlite:///optuna.db")
    study = open_study(sweep, "quickstart-3f2a", storage, maximise=True)
    with study_lock(storage, study.study_name):                     # workers ask one at a time
        trial = study.ask(); params = suggest(trial, sweep.space)   # {'finetune.lr': 0.12, ...}
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from layerwise.config.sweep import Range, SweepConfig
from layerwise.store.locks import file_lock

PROCESS_ATTR = "process"          # the process that ran a trial (host:pid:start), to tell a dead one
DIED_ATTR = "died"                # failed because its process died or was interrupted: asked again
BASELINE_ATTR = "baseline"        # the trial that runs the pipeline's own values
RETRY_OF_ATTR = "retry_of"        # a re-asked trial: the number of the one it repeats
STALE_RETRIES = 3                 # a trial whose worker went silent is asked again this often at most
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial


@contextlib.contextmanager
def _settled_api() -> Iterator[None]:
    """Heartbeats, fail_stale_trials and the retry callback are still marked experimental (since
    Optuna 2.8-3.0): their warning, once per call, would drown the sweep's own lines."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def make_sampler(sweep: SweepConfig) -> optuna.samplers.BaseSampler:
    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler({key: rng.grid() for key, rng in sweep.space.items()}, seed=sweep.seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    startup = {} if sweep.startup_trials is None else {"n_startup_trials": sweep.startup_trials}
    return optuna.samplers.TPESampler(seed=sweep.seed, **startup)


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    # the median rule once 3 trials have finished, and only after sweep.pruning_warmup epochs of a
    # trial (Optuna's steps are the epochs the trial reports; it prunes from step n_warmup_steps on)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=sweep.pruning_warmup) \
        if sweep.pruning else optuna.pruners.NopPruner()


def make_storage(sweep: SweepConfig, url: str) -> RDBStorage:
    """The study's database, with heartbeats: a worker writes one every `sweep.heartbeat` s for
    each trial it runs; a trial silent for `sweep.grace_period` s (its worker killed, its host
    gone) is failed by the next worker that takes stock and asked again with the same values
    (Optuna's RetryHeartbeatStaleTrialCallback), at most STALE_RETRIES times."""
    engine = {} if url.startswith("sqlite") else {"pool_pre_ping": True}  # a server may drop idle connections
    with _settled_api(), _schema_lock(url):
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=sweep.heartbeat, grace_period=sweep.grace_period,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=STALE_RETRIES))


def shown_storage(url: str) -> str:
    """A storage URL fit for logs, tags and params: any password in it masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: show only its scheme
        return url.split(":", 1)[0] + ":…"


def open_study(sweep: SweepConfig, name: str, storage: Union[str, RDBStorage], maximise: bool,
               first: Optional[dict[str, Any]] = None) -> optuna.Study:
    """The stored study NAME, created on first use and continued after (load_if_exists). A new
    study's first trial runs `first` (the pipeline's own values) when given. A resumed study's
    sampler is seeded past the trials it has, so it does not replay the draws of the first
    process (TPE starts with random draws: the same seed would ask the same values again)."""
    if isinstance(storage, str):
        storage = make_storage(sweep, storage)
    study = optuna.create_study(storage=storage, study_name=name, sampler=make_sampler(sweep),
                                pruner=make_pruner(sweep), direction="maximize" if maximise else "minimize",
                                load_if_exists=True)
    with study_lock(storage, name):  # two workers opening a new study at once: one baseline trial
        asked = len(study.get_trials(deepcopy=False))
        if not asked and first is not None and sweep.sampler != "grid":  # a grid visits its own points
            study.enqueue_trial(first, user_attrs={BASELINE_ATTR: True})
    if asked and sweep.sampler != "grid":  # the grid sampler visits each point once, whatever the seed
        study.sampler = make_sampler(sweep.model_copy(update={"seed": sweep.seed + asked}))
    return study


def study_lock(storage: RDBStorage, name: str) -> contextlib.AbstractContextManager:
    """Serialises, between every worker of study NAME (threads, processes, hosts), the counting of
    its trials and the asking of new ones, so that together they start exactly the trials still
    missing and re-ask a dead worker's trial once."""
    return _database_lock(storage.engine, f"study:{name}")


@contextlib.contextmanager
def _database_lock(engine, name: str) -> Iterator[None]:
    """PostgreSQL: an advisory lock (the server frees it when its holder dies); sqlite: a file lock
    beside the database (one host); any other database: none (run one worker per study there)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(f"layerwise-{name}".encode()).digest()[:8], "big", signed=True)
        with engine.connect() as con:
            con.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                con.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                con.commit()
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        database = Path(engine.url.database)
        with file_lock(database.with_name(f"{database.name}.{name.split(':')[0]}.lock")):
            yield
    else:
        yield


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Optuna creates its tables on first use; two workers doing it at once collide (a duplicate
    type or table), so the first use of a database is taken one worker at a time."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with _database_lock(engine, "schema"):
            yield
    finally:
        engine.dispose()


class Heartbeat:
    """Writes a running trial's heartbeat (RDBStorage.record_heartbeat) every `heartbeat` s from a
    daemon thread until stop(). Optuna's own thread belongs to study.optimize and keeps a process
    alive until joined; this ask-and-tell loop stops it when the trial is told."""

    def __init__(self, storage: RDBStorage, trial_id: int):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, storage.get_heartbeat_interval()),
                                        name=f"heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def _beat(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a dropped connection: the next beat tries again; a long
                pass           # outage ends with the trial failed as stale and asked again
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def suggest(trial: optuna.Trial, space: dict[str, Range]) -> dict[str, Any]:
    """One value per space key (a 'layers.*.l1' key: one value every layer takes)."""
    params = {}
    for key, rng in space.items():
        if rng.kind == "uniform":
            params[key] = trial.suggest_float(key, *rng.uniform)
        elif rng.kind == "log_uniform":
            params[key] = trial.suggest_float(key, *rng.log_uniform, log=True)
        elif rng.kind == "int":
            params[key] = trial.suggest_int(key, *rng.int)
        else:
            params[key] = trial.suggest_categorical(key, rng.choice)
    return params


def ask(study: optuna.Study) -> optuna.Trial:
    """study.ask(), without the warning that heartbeats are meant for study.optimize: the trials of
    this ask-and-tell loop get theirs from Heartbeat."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def mark_running(trial: optuna.Trial, process: str) -> None:
    trial.set_user_attr(PROCESS_ATTR, process)


def recover(study: optuna.Study, alive: Callable[[str], bool]) -> list[int]:
    """Trials whose worker is gone are marked FAIL and their parameters asked again: those left
    RUNNING by a process of this host that is dead (SIGKILL, power loss: known at once), those a
    Ctrl-C ended, and those whose heartbeat stopped for the grace period (a worker on any host:
    Optuna's fail_stale_trials, which re-asks them through the storage's retry callback). None is
    lost, none counted. Returns the numbers of the trials re-asked. Run it under study_lock."""
    storage, again = study._storage, []  # Optuna's public API cannot fail another process's trial
    for trial in study.get_trials(deepcopy=False):
        stale = trial.state == TrialState.RUNNING and not alive(trial.user_attrs.get(PROCESS_ATTR, ""))
        interrupted = trial.state == TrialState.FAIL and trial.user_attrs.get(DIED_ATTR) == "interrupted"
        if not (stale or interrupted):
            continue
        if stale:
            storage.set_trial_user_attr(trial._trial_id, DIED_ATTR, "process gone")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        # an interrupted trial is finished (FAIL) and cannot be changed: its re-asked twin says so
        if not any(t.user_attrs.get(RETRY_OF_ATTR) == trial.number for t in study.get_trials(deepcopy=False)):
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
            again.append(trial.number)
    before = stale_retried(study)
    with _settled_api():
        optuna.storages.fail_stale_trials(study)
    return sorted(again + list(stale_retried(study) - before))


def median_at(study: optuna.Study, step: int) -> Optional[float]:
    """The median of the finished (COMPLETE) trials' values reported at step: what the median rule
    compares a running trial with (None before any finished trial reached that step)."""
    import statistics

    values = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if step in t.intermediate_values]
    return statistics.median(values) if values else None


def stale_retried(study: optuna.Study) -> set[int]:
    """The trials failed for a silent heartbeat and asked again (RetryHeartbeatStaleTrialCallback's history)."""
    with _settled_api():
        return {number for t in study.get_trials(deepcopy=False)
                for number in RetryHeartbeatStaleTrialCallback.retry_history(t)}


def counted(trial: optuna.trial.FrozenTrial, retried: frozenset[int] = frozenset()) -> bool:
    """A trial the sweep's count includes: finished (complete or pruned), or failed by its own
    config (diverged, invalid); not one whose worker died (retried: stale_retried), which is
    asked again."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and DIED_ATTR not in trial.user_attrs and trial.number not in retried


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    retried = frozenset(stale_retried(study))
    return [t for t in study.get_trials(deepcopy=False) if counted(t, retried)]


def finished(study: optuna.Study) -> int:
    return len(counted_trials(study))


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials some worker (this process or another) runs now."""
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def last_finished(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
    """The counted trial told last: the worker that told it concludes the sweep."""
    done = counted_trials(study)
    return max(done, key=lambda t: (t.datetime_complete, t.number)) if done else None


def best_trial(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def trials_table(study: optuna.Study):
    """Every trial: number, state, objective, parameters, times (a pandas DataFrame)."""
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    return table.rename(columns={"value": "objective"})


def plot_history(study: optuna.Study, objective: str, path: Path) -> Path:
    """The objective of every finished trial by trial number, and the best so far."""
    from layerwise.report.figures import _pyplot

    plt = _pyplot()
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    maximise = study.direction == optuna.study.StudyDirection.MAXIMIZE
    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = [t.number for t in done], [t.value for t in done]
    ax.plot(xs, ys, "o", label="trial")
    best, line = None, []
    for y in ys:
        best = y if best is None else (max(best, y) if maximise else min(best, y))
        line.append(best)
    ax.step(xs, line, where="post", label="best so far")
    pruned = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))]
    if pruned:
        ax.plot(pruned, [min(ys or [0])] * len(pruned), "x", color="grey", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{objective} (validation)")
    ax.legend()
    ax.set_title(f"{study.study_name}: {objective} by trial")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_importance(study: optuna.Study, path: Path) -> Optional[Path]:
    """Optuna's parameter importance (fANOVA) as a bar chart; None while it cannot be computed
    (fewer than two finished trials, or one parameter that never varied)."""
    from layerwise.report.figures import _pyplot

    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # "too few trials": no figure rather than a flat one
            importance = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, UserWarning):
        return None
    if not importance:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.4 * len(importance)))
    names = list(importance)[::-1]
    ax.barh(names, [importance[n] for n in names])
    ax.set_xlabel("importance for the objective (fANOVA, sums to 1)")
    ax.set_title(f"{study.study_name}: parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_name(pipeline: str, payload: dict) -> str:
    """One study per pipeline and search: the pipeline's settings and the space decide it (trials,
    workers and storage do not: raising `trials` continues the same study)."""
    import hashlib

    text = json.dumps(payload, sort_keys=True, default=str)
    return f"{pipeline}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
