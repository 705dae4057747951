"""Sweeps without a run: the search space is checked before any trial (exit 2 naming the key), a
trial's values reach every layer a '*' key names, and a study left by a dead process is recovered:
its running trial failed and asked again with the same values, finished trials kept."""
import optuna
import pytest
from optuna.trial import TrialState

from layerwise.config import ConfigError, baseline_values, load_pipeline, load_raw, trial_raw
from layerwise.config.sweep import SweepConfig, expand_key
from layerwise.report.search import (BASELINE_ATTR, DIED_ATTR, RETRY_OF_ATTR, counted, finished, make_pruner, mark_running,
                              open_study, recover, study_name, suggest)

SPACE_ERRORS = [
    ("{finetune.lrr: {uniform: [0.1, 1]}}", "sweep.space.finetune.lrr at 0.1: finetune.lrr: unknown key"),
    ("{finetune.lr: {uniform: [1, 1]}}", "sweep.space.finetune.lr: uniform [1.0, 1.0] is an empty range"),
    ("{finetune.lr: {log_uniform: [0, 1]}}", "sweep.space.finetune.lr: log_uniform [0.0, 1.0] needs low > 0"),
    ("{finetune.optimizer: {uniform: [0, 1]}}",
     "sweep.space.finetune.optimizer: a uniform range needs a number, but finetune.optimizer is 'adam'"),
    ("{finetune.epochs: {uniform: [1, 5]}}", "sweep.space.finetune.epochs: finetune.epochs takes whole numbers"),
    ("{finetune.optimizer: {choice: [sgd, rmsprop]}}", "sweep.space.finetune.optimizer at 'rmsprop'"),
    ("{layers.*.size: {int: [0, 10]}}", "sweep.space.layers.*.size at 0: layers.0.size"),
    ("{data.train_size: {int: [100, 200]}}", "sweep.space.data.train_size: data is the same for every trial"),
    ("{finetune.lr: {choice: []}}", "sweep.space.finetune.lr"),
    ("{}", "sweep.space: Dictionary should have at least 1 item"),
]


@pytest.mark.parametrize("space, message", SPACE_ERRORS, ids=[m.split(":")[0] for _, m in SPACE_ERRORS])
def test_a_bad_search_space_is_a_config_error_naming_the_key(space, message):
    with pytest.raises(ConfigError, match="pipeline 'smoke-sweep': ") as caught:
        load_pipeline("smoke-sweep", overrides=[f"sweep.space={space}"])
    assert message in str(caught.value)


def test_a_bad_sweep_exits_2_before_any_run(tmp_path, capsys, monkeypatch):
    from flows.cli import main

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    assert main(["sweep", "smoke-sweep", "--set", "sweep.space={finetune.lr: {log_uniform: [-1, 1]}}"]) == 2
    assert main(["sweep", "smoke"]) == 2  # a pipeline without a sweep: block
    err = capsys.readouterr().err
    assert "sweep.space.finetune.lr: log_uniform [-1.0, 1.0] needs low > 0" in err
    assert "pipeline 'smoke' has no sweep: block" in err and "Traceback" not in err and not store.exists()


def test_objective_and_grid_are_checked_against_the_pipeline():
    with pytest.raises(ConfigError, match="sweep.objective val_sq_error does not fit a pipeline that fine-tunes"):
        load_pipeline("smoke-sweep", overrides=["sweep.objective=val_sq_error"])
    with pytest.raises(ConfigError, match="sampler grid: a grid cannot enumerate log_uniform"):
        load_pipeline("smoke-sweep", overrides=["sweep.sampler=grid"])
    with pytest.raises(ConfigError, match="sweep.trials is 7 but the grid has 6 points"):
        load_pipeline("smoke-sweep", overrides=["sweep.sampler=grid", "sweep.trials=7",
                                                "sweep.space={finetune.epochs: {int: [1, 3]}, layers.*.l1: {choice: [0, 0.1]}}"])


def test_a_star_key_sets_every_layer_and_the_data_block_is_the_runs():
    raw = load_raw("smoke-sweep")
    assert expand_key("layers.*.l1", raw) == ["layers.0.l1", "layers.1.l1"]
    data = {"train_size": 500, "val_size": 100, "split_seed": 0, "path": None}
    written = trial_raw(raw, {"layers.*.l1": 0.01, "finetune.lr": 0.2}, data, "test")
    assert [layer["l1"] for layer in written["layers"]] == [0.01, 0.01] and written["finetune"]["lr"] == 0.2
    assert "sweep" not in written and written["data"] is data


def test_the_final_set_applies_last_and_is_checked_before_any_trial():
    raw = load_raw("smoke-sweep")
    data = {"train_size": 500, "val_size": 100, "split_seed": 0, "path": None}
    final = {"data.val_size": 0, "finetune.keep": "last"}
    written = trial_raw(raw, {"finetune.lr": 0.2}, data, "test", final)
    assert written["data"]["val_size"] == 0 and written["finetune"]["keep"] == "last"
    assert written["finetune"]["lr"] == 0.2 and data["val_size"] == 100  # the run's data block is not changed
    assert load_pipeline("smoke-sweep", overrides=[f"sweep.final_set={final}"]).sweep.final_set == final
    with pytest.raises(ConfigError, match="sweep.final_set: data.val_size is 0: .* set finetune.keep: last"):
        load_pipeline("smoke-sweep", overrides=["sweep.final_set={data.val_size: 0}"])
    with pytest.raises(ConfigError, match="final_set.finetune.lr is searched by the space"):
        load_pipeline("smoke-sweep", overrides=["sweep.final_set={finetune.lr: 0.1}"])


def test_startup_trials_is_tpes_and_changing_it_keeps_the_study(tmp_path):
    from flows.sweep import _study_payload

    with pytest.raises(ConfigError, match="startup_trials is TPE's random start; sampler random has none"):
        load_pipeline("smoke-sweep", overrides=["sweep.sampler=random", "sweep.startup_trials=3"])
    fewer = ["sweep.startup_trials=2"]
    ids = {study_name("smoke-sweep", _study_payload(load_pipeline("smoke-sweep", overrides=o),
                                                    load_raw("smoke-sweep", overrides=o))) for o in ([], fewer)}
    assert len(ids) == 1  # a running study can be told to draw from its model sooner
    sweep, storage = load_pipeline("smoke-sweep", overrides=fewer).sweep, f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(sweep, "s", storage, maximise=True)
    study.tell(study.ask(), 0.5)
    for opened in (study, open_study(sweep, "s", storage, maximise=True)):  # new, and resumed (re-seeded)
        assert opened.sampler._n_startup_trials == 2  # Optuna's own setting (private attribute)
    assert open_study(_sweep(), "t", storage, maximise=True).sampler._n_startup_trials == 10  # Optuna's default


def _sweep() -> SweepConfig:
    return load_pipeline("smoke-sweep").sweep


def test_a_dead_processs_trial_is_failed_and_asked_again_with_its_values(tmp_path):
    sweep = _sweep()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(sweep, "s", storage, maximise=True)
    for value in (0.5, None):  # one finished trial, one left running by a process that is gone
        trial = study.ask()
        mark_running(trial, "host:1:1" if value is None else "me")
        suggest(trial, sweep.space)
        if value is not None:
            study.tell(trial, value)
    study = open_study(sweep, "s", storage, maximise=True)  # a new process
    assert recover(study, alive=lambda identity: identity == "me") == [1]
    dead = study.trials[1]
    assert dead.state == TrialState.FAIL and dead.user_attrs[DIED_ATTR] == "process gone" and not counted(dead)
    assert finished(study) == 1
    retry = study.ask()
    assert suggest(retry, sweep.space) == dead.params  # the same values, asked again
    assert retry.user_attrs[RETRY_OF_ATTR] == 1
    study.tell(retry, 0.6)
    assert recover(study, alive=lambda identity: False) == []  # already re-asked: not enqueued twice
    assert finished(study) == 2
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.5


def test_a_resumed_study_does_not_replay_the_first_processs_draws(tmp_path):
    sweep = _sweep()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = open_study(sweep, "s", storage, maximise=True)
    drawn = []
    for _ in range(2):
        trial = first.ask()
        drawn.append(suggest(trial, sweep.space)["finetune.lr"])
        first.tell(trial, 0.5)
    again = open_study(sweep, "s", storage, maximise=True)
    assert suggest(again.ask(), sweep.space)["finetune.lr"] not in drawn
    fresh = open_study(sweep, "t", storage, maximise=True)  # a new study: the sweep's seed, reproducible
    assert suggest(fresh.ask(), sweep.space)["finetune.lr"] == drawn[0]
    assert isinstance(fresh.sampler, optuna.samplers.TPESampler)


def test_an_interrupted_trial_is_asked_again_once(tmp_path):
    sweep = _sweep()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(sweep, "s", storage, maximise=True)
    trial = study.ask()
    params = suggest(trial, sweep.space)
    study._storage.set_trial_user_attr(trial._trial_id, DIED_ATTR, "interrupted")  # as the sweep's Ctrl-C does
    study.tell(trial, state=TrialState.FAIL)
    study = open_study(sweep, "s", storage, maximise=True)
    assert recover(study, alive=lambda identity: True) == [0] and finished(study) == 0
    assert recover(study, alive=lambda identity: True) == []  # its twin is waiting: not enqueued twice
    assert suggest(study.ask(), sweep.space) == params


def test_the_first_trial_runs_the_pipelines_own_values_when_they_lie_in_the_space(tmp_path):
    sweep, raw = _sweep(), load_raw("smoke-sweep")
    first = baseline_values(raw, sweep.space)
    assert first == {"finetune.lr": 0.003, "layers.*.l1": 0.03}
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(sweep, "s", storage, maximise=True, first=first)
    trial = study.ask()
    assert suggest(trial, sweep.space) == first and trial.user_attrs[BASELINE_ATTR]
    study.tell(trial, 0.5)
    again = open_study(sweep, "s", storage, maximise=True, first=first)  # resumed: not enqueued twice
    assert suggest(again.ask(), sweep.space) != first
    outside = load_raw("smoke-sweep", overrides=["finetune.lr=0.1"])
    uneven = load_raw("smoke-sweep", overrides=["layers.1.l1=0.0"])  # a '*' key needs one value for all
    assert baseline_values(outside, sweep.space) is None and baseline_values(uneven, sweep.space) is None
    defaults = {"finetune.hidden_lr_scale": load_pipeline("paper").sweep.space["finetune.hidden_lr_scale"]}
    assert baseline_values(load_raw("paper"), defaults) == {"finetune.hidden_lr_scale": 0.698}  # as written
    unwritten = load_raw("paper")
    del unwritten["finetune"]["hidden_lr_scale"]
    assert baseline_values(unwritten, defaults) == {"finetune.hidden_lr_scale": 1.0}  # a default counts


@pytest.mark.parametrize("warmup, pruned", [(2, True), (5, False)])
def test_no_trial_is_pruned_before_its_warmup_epochs(tmp_path, warmup, pruned):
    sweep = _sweep().model_copy(update={"pruning": True, "pruning_warmup": warmup})
    study = optuna.create_study(direction="maximize", pruner=make_pruner(sweep))
    for _ in range(3):  # three good trials: the median rule is in force
        trial = study.ask()
        for epoch in range(1, 6):
            trial.report(0.9, epoch)
        study.tell(trial, 0.9)
    trial = study.ask()
    trial.report(0.1, 3)  # far below the median at epoch 3
    assert bool(trial.should_prune()) is pruned
