"""A sweep's search, on Optuna: the study (stored, so a killed sweep resumes), what each trial
draws from the `sweep:` block's space, recovery of the trials a dead process left running, and
the study's table and figures. No tracker and no orchestrator: flows/sweep.py runs the trials.

    study = open_study(sweep, "quickstart-3f2a", "sqlite:///optuna.db", maximise=True)
    trial = study.ask(); params = suggest(trial, sweep.space)   # {'finetune.lr': 0.12, ...}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from optuna.trial import TrialState

from layerwise.config.sweep import Range, SweepConfig

PROCESS_ATTR = "process"          # the process that ran a trial (host:pid:start), to tell a dead one
DIED_ATTR = "died"                # failed because its process died or was interrupted: asked again
BASELINE_ATTR = "baseline"        # the trial that runs the pipeline's own values
RETRY_OF_ATTR = "retry_of"        # a re-asked trial: the number of the one it repeats
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial


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


def open_study(sweep: SweepConfig, name: str, storage: str, maximise: bool,
               first: Optional[dict[str, Any]] = None) -> optuna.Study:
    """The stored study NAME, created on first use and continued after (load_if_exists). A new
    study's first trial runs `first` (the pipeline's own values) when given. A resumed study's
    sampler is seeded past the trials it has, so it does not replay the draws of the first
    process (TPE starts with random draws: the same seed would ask the same values again)."""
    study = optuna.create_study(storage=storage, study_name=name, sampler=make_sampler(sweep),
                                pruner=make_pruner(sweep), direction="maximize" if maximise else "minimize",
                                load_if_exists=True)
    asked = len(study.get_trials(deepcopy=False))
    if not asked and first is not None and sweep.sampler != "grid":  # a grid visits its own points
        study.enqueue_trial(first, user_attrs={BASELINE_ATTR: True})
    if asked and sweep.sampler != "grid":  # the grid sampler visits each point once, whatever the seed
        study.sampler = make_sampler(sweep.model_copy(update={"seed": sweep.seed + asked}))
    return study


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


def mark_running(trial: optuna.Trial, process: str) -> None:
    trial.set_user_attr(PROCESS_ATTR, process)


def recover(study: optuna.Study, alive: Callable[[str], bool]) -> list[int]:
    """Trials left RUNNING by a process that is gone (SIGKILL, power loss) are marked FAIL and
    their parameters asked again (enqueued), as are trials a Ctrl-C ended: none is lost, none
    counted. Returns the numbers of the trials re-asked."""
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
    return again


def median_at(study: optuna.Study, step: int) -> Optional[float]:
    """The median of the finished (COMPLETE) trials' values reported at step: what the median rule
    compares a running trial with (None before any finished trial reached that step)."""
    import statistics

    values = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if step in t.intermediate_values]
    return statistics.median(values) if values else None


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial the sweep's count includes: finished (complete or pruned), or failed by its own
    config (diverged, invalid); not one whose process died, which is asked again."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and DIED_ATTR not in trial.user_attrs


def finished(study: optuna.Study) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def best_trial(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def trials_table(study: optuna.Study):
    """Every trial: number, state, objective, parameters, times (a pandas DataFrame)."""
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    return table.rename(columns={"value": "objective"})


def plot_history(study: optuna.Study, objective: str, path: Path) -> Path:
    """The objective of every finished trial by trial number, and the best so far."""
    from layerwise.figures import _pyplot

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
    from layerwise.figures import _pyplot

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
