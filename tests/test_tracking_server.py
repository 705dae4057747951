"""Team mode: the pipeline unchanged against a real `mlflow server` over HTTP (its system metrics
written while it runs); an unreachable store is refused before any training."""
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from servers import base_env, free_port, mlflow_server, run_until

pytestmark = pytest.mark.slow


def test_smoke_runs_against_an_mlflow_tracking_server(tmp_path):
    with mlflow_server(tmp_path / "mlruns") as url:
        done = subprocess.run([sys.executable, "-m", "flows", "run", "smoke"], cwd=REPO, capture_output=True,
                              text=True, timeout=600,
                              env=base_env(MLFLOW_TRACKING_URI=url, LAYERWISE_WORKDIR=str(tmp_path / "work")))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"Open it: {url}/#/experiments/" in done.stdout
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("smoke")
        [parent] = [r for r in client.search_runs([experiment.experiment_id])
                    if "mlflow.parentRunId" not in r.data.tags]
        assert parent.info.status == "FINISHED" and "test_error" in parent.data.metrics
        children = client.search_runs([experiment.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        stages = {run.data.tags["layerwise.stage"]: run for run in children}
        assert sorted(stages) == ["finetune", "pretrain-1", "pretrain-2", "pretrain-3"]
        # artifacts go through the server into its artifact folder
        weights = client.download_artifacts(stages["pretrain-2"].info.run_id, "pretrain-2.pt", str(tmp_path))
        assert (tmp_path / "pretrain-2.pt").stat().st_size > 1_000_000 and weights
        assert list((tmp_path / "mlruns" / "artifacts").rglob("pretrain-2.pt"))
        [version] = client.search_model_versions("name='smoke-classifier'")
        assert version.run_id == stages["finetune"].info.run_id


def test_an_unreachable_tracking_store_fails_before_training(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows", "run", "smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env=base_env(MLFLOW_TRACKING_URI=url, LAYERWISE_WORKDIR=str(tmp_path / "work")))
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"MLflow tracking store {url} is not usable" in done.stderr and "make mlflow-server" in done.stderr
    assert "epoch" not in done.stdout + done.stderr and not (tmp_path / "work").exists()
    assert time.monotonic() - started < 60


def _samples(client, run_id: str) -> int:
    return len(client.get_metric_history(run_id, "system/cpu_utilization_percentage"))


def _wait_for_samples(client, run_id: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _samples(client, run_id) < count:
        assert time.monotonic() < deadline, f"{_samples(client, run_id)} system metric samples after {timeout} s"
        time.sleep(0.5)


def test_system_metrics_are_written_while_the_run_goes_on_a_tracking_server(tmp_path, monkeypatch):
    with mlflow_server(tmp_path / "mlruns") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        from tasks.runs import live_system_metrics, system_metrics

        assert live_system_metrics()
        client = MlflowClient(url)
        run_id = client.create_run(client.create_experiment("system")).info.run_id
        with system_metrics(run_id, every=0.5):
            _wait_for_samples(client, run_id, 3)  # inside the block: written as they are taken
        assert "system/system_memory_usage_megabytes" in client.get_run(run_id).data.metrics

        # the whole command: the parent's System metrics tab fills while its stages train, and an
        # interrupt keeps what was written and ends the runs KILLED
        monkeypatch.setenv("LAYERWISE_WORKDIR", str(tmp_path / "work"))  # run_until's base_env() passes it on
        proc, _ = run_until(["run", "smoke", "--set", "layers.1.epochs=100000", "--set", "system_metrics=1"],
                            "[pretrain-2] epoch ")
        try:
            experiment = client.get_experiment_by_name("smoke")
            [parent] = [r for r in client.search_runs([experiment.experiment_id])
                        if "mlflow.parentRunId" not in r.data.tags]
            _wait_for_samples(client, parent.info.run_id, 3)
            assert client.get_run(parent.info.run_id).info.status == "RUNNING"
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 130
        assert client.get_run(parent.info.run_id).info.status == "KILLED" and _samples(client, parent.info.run_id) >= 3
