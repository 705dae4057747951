"""A pruned sweep trial, for real: one log line saying why (the trial, the epoch, its value and the
median it fell below), PRUNED in Optuna, KILLED and tagged PRUNED in MLflow, a Prefect state named
Pruned, and no traceback anywhere: not in the terminal, not in the logs Prefect's server keeps."""
import re
import subprocess
import sys

import httpx
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import REPO
from servers import base_env, prefect_server

pytestmark = pytest.mark.slow

# trial 0 runs the pipeline's own lr (0.003); the seeded random draws then give trial 3 lr 1e-6,
# which leaves the validation accuracy at chance while the finished trials climb: pruned at epoch 4
SWEEP = ["sweep", "smoke-sweep", "--set", "sweep.sampler=random", "--set", "sweep.seed=1", "--set", "sweep.trials=4",
         "--set", "sweep.pruning=true", "--set", "sweep.pruning_warmup=4", "--set", "sweep.final_run=false",
         "--set", "sweep.space={finetune.lr: {log_uniform: [1e-6, 0.03]}}"]


def _all(api: str, kind: str) -> list[dict]:
    """Every log or task run the Prefect server holds (its filter endpoint pages by 200)."""
    rows: list[dict] = []
    while True:
        page = httpx.post(f"{api}/{kind}/filter", json={"limit": 200, "offset": len(rows)}, timeout=30).json()
        rows += page
        if len(page) < 200:
            return rows


def test_a_pruned_trial_is_one_line_and_a_pruned_state_without_a_traceback(tracking, tmp_path):
    with prefect_server(tmp_path / "prefect") as api:
        done = subprocess.run([sys.executable, "-m", "flows", *SWEEP], cwd=REPO, capture_output=True, text=True,
                              timeout=900, env=base_env(PREFECT_API_URL=api))
        terminal = done.stdout + done.stderr
        assert done.returncode == 0, terminal[-5000:]
        logs = "\n".join(log["message"] for log in _all(api, "logs"))
        task_runs = {run["name"]: run["state_name"] for run in _all(api, "task_runs")}

    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    [summary] = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    pruned = [t.number for t in trials if t.state == TrialState.PRUNED]
    assert 3 in pruned, [(t.number, t.state.name, t.params) for t in trials]

    assert "Traceback" not in terminal and "Traceback" not in logs
    for number in pruned:
        lines = [line for line in terminal.splitlines() if f"trial {number} pruned" in line]
        assert len(lines) == 1, lines
        assert re.search(rf"trial {number} pruned at epoch (\d+): val_accuracy [\d.]+( \(its best so far [\d.]+\))?, "
                         rf"below the median [\d.]+ of the finished trials at epoch \1 · \d/4 trials done", lines[0])
        assert f"trial {number} pruned at epoch" in logs  # the same line in Prefect's log
        assert task_runs[f"trial-{number}"] == task_runs[f"finetune-trial-{number}"] == "Pruned"
    assert "| ERROR" not in terminal and "Failed(" not in terminal  # no task reads as crashed

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("smoke-sweep").experiment_id], max_results=1000)
    [sweep] = [r for r in runs if r.data.tags.get("layerwise.kind") == "sweep"]  # sampled at its start and end
    assert len(client.get_metric_history(sweep.info.run_id, "system/cpu_utilization_percentage")) >= 2
    [trial] = [r for r in runs if r.data.tags.get("layerwise.trial") == "3"]
    assert trial.info.status == "KILLED" and trial.data.tags["layerwise.trial_state"] == "PRUNED"
    [tuned] = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == trial.info.run_id
               and r.data.tags["layerwise.stage"] == "finetune"]
    assert tuned.info.status == "KILLED"
    # the epochs it trained are in its history, up to the one it was pruned at
    epochs = [m.step for m in client.get_metric_history(tuned.info.run_id, "val_accuracy")]
    assert epochs == list(range(1, epochs[-1] + 1)) and epochs[-1] >= 4
