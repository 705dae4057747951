"""Ctrl-C in the middle of a stage: every open run ends KILLED, finished stages stay FINISHED, exit 130."""
import signal

from mlflow.tracking import MlflowClient

from conftest import mnist_root
from servers import run_until


def test_ctrl_c_marks_the_open_runs_killed(tracking):
    proc, _ = run_until(["run", "smoke", "--set", "layers.1.epochs=100000", "--data-root", str(mnist_root())],
                        "[pretrain-2] epoch ")
    try:
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
