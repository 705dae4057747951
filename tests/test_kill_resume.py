"""SIGKILL in the middle of stage 2, then run again: stage 1 is reused (linked to the run that
trained it), the dead run is marked KILLED, the new run completes."""
import os
import shlex
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from servers import base_env, run_until

pytestmark = pytest.mark.slow


def test_a_killed_run_is_marked_killed_and_the_next_run_resumes_from_its_finished_stages(tracking, tmp_path):
    killed, _ = run_until(["run", "smoke", "--set", "layers.1.epochs=100000"], "[pretrain-2] epoch ")
    os.killpg(killed.pid, signal.SIGKILL)  # no handler runs: the runs stay RUNNING
    killed.wait()

    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("smoke").experiment_id
    before = {r.data.tags.get("layerwise.stage", "parent"): r for r in client.search_runs([experiment_id])}
    assert {stage: run.info.status for stage, run in before.items()} == {
        "parent": "RUNNING", "pretrain-1": "FINISHED", "pretrain-2": "RUNNING"}
    assert len(list((tmp_path / "work" / "runs").iterdir())) == 1  # the dead run's scratch

    done = subprocess.run([sys.executable, "-m", "flows", "run", "smoke"], cwd=REPO, env=base_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    log = done.stdout + done.stderr
    assert "marked 2 run(s) KILLED that a dead process had left RUNNING" in log
    assert "[pretrain-1] reused" in log and "[pretrain-1] epoch" not in log and "[pretrain-2] epoch 1/1" in log

    for stage in ("parent", "pretrain-2"):
        assert client.get_run(before[stage].info.run_id).info.status == "KILLED"
    parents = [r for r in client.search_runs([experiment_id], "attributes.status = 'FINISHED'")
               if "mlflow.parentRunId" not in r.data.tags]
    [resumed] = parents
    children = {r.data.tags["layerwise.stage"]: r for r in client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{resumed.info.run_id}'")}
    assert children["pretrain-1"].data.tags["layerwise.reused"] == "true"
    assert children["pretrain-1"].data.tags["layerwise.pretrain_run_id"] == before["pretrain-1"].info.run_id
    assert "layerwise.reused" not in children["pretrain-2"].data.tags
    assert all(run.info.status == "FINISHED" for run in children.values()) and "test_error" in resumed.data.metrics
    # system metrics at the default interval (10 s), on a run that may be shorter: its start and end at least
    assert len(client.get_metric_history(resumed.info.run_id, "system/cpu_utilization_percentage")) >= 2
    assert not list((tmp_path / "work" / "runs").iterdir()), "the dead run's scratch is cleaned up"

    # the summary's last lines: a command that works as printed where only the system's PATH is set
    # (`mlflow` alone exists only inside the venv), then the run's page
    *_, opener, page = done.stdout.strip().splitlines()
    assert opener.startswith("Open it: ") and page.endswith(f"/#/experiments/{experiment_id}/runs/{resumed.info.run_id}")
    command = shlex.split(opener[len("Open it: "):])
    assert command[-2:] == ["--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"]]
    parsed = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")})
    assert parsed.returncode == 0 and "--backend-store-uri" in parsed.stdout, parsed.stderr[-3000:]
