"""Team mode: the pipeline unchanged against a real `mlflow server` over HTTP; an unreachable
store is refused before any training."""
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from servers import base_env, free_port, mlflow_server

pytestmark = pytest.mark.slow


def test_smoke_runs_against_an_mlflow_tracking_server(tmp_path):
    with mlflow_server(tmp_path / "mlruns") as url:
        done = subprocess.run([sys.executable, "-m", "flows", "run", "smoke"], cwd=REPO, capture_output=True,
                              text=True, timeout=600,
                              env=base_env(MLFLOW_TRACKING_URI=url, LAYERWISE_WORKDIR=str(tmp_path / "work")))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"open {url}" in done.stdout
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
