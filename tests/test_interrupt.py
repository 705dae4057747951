"""Ctrl-C in the middle of a stage: every open run ends KILLED, finished stages stay FINISHED, exit 130."""
import os
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from conftest import REPO, mnist_root


def test_ctrl_c_marks_the_open_runs_killed(tracking):
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows", "run", "smoke", "--set", "layers.1.epochs=100000",
         "--data-root", str(mnist_root())],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.monotonic() + 240
    try:
        for line in proc.stdout:
            seen.append(line)
            if "[pretrain-2] epoch " in line or time.monotonic() > deadline:
                break
        assert any("[pretrain-2] epoch " in line for line in seen), "".join(seen[-30:])
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, rest[-3000:]
    client = MlflowClient()
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    status = {run.data.tags.get("layerwise.stage", "parent"): run.info.status for run in runs}
    assert status == {"parent": "KILLED", "pretrain-1": "FINISHED", "pretrain-2": "KILLED"}
