"""`layerwise sweep` for real, on the smoke data: SIGKILL in the middle of a trial, then the same
command again. The study ends with exactly `trials` finished trials, none run twice, the dead
trial asked again with its values; MLflow holds one sweep parent with every trial nested under it
(each trial's stage and fine-tune runs under the trial), nothing RUNNING, no test metric anywhere
but in the final run, which trains on the validation images too (sweep.final_set); and the
best.yaml the parent carries runs with `layerwise run --config`."""
import os
import signal
import subprocess
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import REPO
from report_checks import check_sweep
from servers import base_env, run_until

pytestmark = pytest.mark.slow

TRIALS = 3
# long enough fine-tunes that the kill lands inside trial 1 (pretraining is shared by equal l1s)
ARGS = ["sweep", "smoke-sweep", "--set", f"sweep.trials={TRIALS}", "--set", "finetune.epochs=150",
        "--set", "sweep.final_set={data.val_size: 0, finetune.keep: last}"]


def _descendants(runs, root_id):
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == root_id]
    return children + [d for c in children for d in _descendants(runs, c.info.run_id)]


def test_a_sweep_killed_mid_trial_resumes_to_exactly_its_trials(tracking, tmp_path):
    killed, _ = run_until(ARGS, "Task run 'finetune-trial-1' - [finetune")
    os.killpg(killed.pid, signal.SIGKILL)  # no handler runs: the trial and the sweep stay RUNNING
    killed.wait()
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"  # beside the MLflow store
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    dead_params = study.trials[1].params

    done = subprocess.run([sys.executable, "-m", "flows", *ARGS], cwd=REPO, env=base_env(),
                          capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "trial(s) 1 did not finish" in log and "1 of 3 trials finished (resumed)" in log

    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TRIALS and study.trials[1].state == TrialState.FAIL
    assert [t.number for t in complete] == [0, 2, 3]  # trial 0 kept, not run again
    assert study.trials[2].params == dead_params and study.trials[2].user_attrs["retry_of"] == 1

    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("smoke-sweep").experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # one sweep parent, resumed
    assert parent.data.tags["layerwise.kind"] == "sweep" and parent.info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get("layerwise.kind") == "trial"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    by_state = sorted((r.data.tags["layerwise.trial"], r.info.status) for r in trials)
    assert by_state == [("0", "FINISHED"), ("1", "KILLED"), ("2", "FINISHED"), ("3", "FINISHED")]
    for trial in trials:  # its stages and its fine-tune nested under it, validation only
        stages = {r.data.tags["layerwise.stage"] for r in _descendants(runs, trial.info.run_id)}
        assert stages >= {"pretrain-1", "finetune"} or trial.data.tags["layerwise.trial"] == "1"
        for run in [trial, *_descendants(runs, trial.info.run_id)]:
            assert not [k for k in run.data.metrics if k.startswith("test")], run.info.run_name
    assert {r.data.tags["layerwise.trial"]: r.data.metrics["val_accuracy"] for r in trials
            if r.info.status == "FINISHED"} == {str(t.number): t.value for t in complete}

    [final] = [r for r in runs if r.data.tags.get("layerwise.sweep_final") == "true"]
    best = max(complete, key=lambda t: t.value)
    assert final.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert final.data.tags["layerwise.sweep_best_trial"] == str(best.number)
    assert final.data.tags["layerwise.sweep_final_set"] == '{"data.val_size": 0, "finetune.keep": "last"}'
    assert final.data.params["data.val_size"] == "0" and "val_accuracy" not in final.data.metrics
    assert parent.data.metrics["final_test_error"] == final.data.metrics["test_error"]
    assert parent.data.metrics["best_val_accuracy"] == best.value
    assert parent.data.tags["best.finetune.lr"] == str(best.params["finetune.lr"])
    assert parent.info.run_name == "smoke-sweep · sweep · 3 trials · val_accuracy (tpe)"
    note = parent.data.tags["mlflow.note.content"]  # the description on the run page
    assert f"best: trial {best.number}" in note and "final run, its test split read once: test error" in note
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | \
        {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"best.yaml", "trials.csv", "figures/objective-by-trial.png", "report.md"} <= artifacts

    # `layerwise report`: the trials (the interrupted one too), the best and the final run, each number
    # as the runs hold it; the same page the sweep left on its parent run
    shown = subprocess.run([sys.executable, "-m", "flows", "report", "smoke-sweep", "--sweep", "--out", "-"],
                           cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    check_sweep(shown.stdout, client, client.get_run(parent.info.run_id))
    logged = open(client.download_artifacts(parent.info.run_id, "report.md", str(tmp_path))).read()
    assert logged.split("\n", 4)[4] == shown.stdout.split("\n", 4)[4]  # all but the title and source lines

    best_yaml = client.download_artifacts(parent.info.run_id, "best.yaml", str(tmp_path))
    again = subprocess.run([sys.executable, "-m", "flows", "run", "--config", best_yaml], cwd=REPO,
                           env=base_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"test error {final.data.metrics['test_error']:.2f}%" in again.stdout
