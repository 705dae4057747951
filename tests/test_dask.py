"""The ablation's cells on a Dask LocalCluster through prefect-dask (the path past one machine).

The proof that the cells ran in Dask worker processes, not in threads of this process, is read from
outside the code under test: tasks/tracking.py start_run tags every MLflow run with the process that
created it (host:pid:start-time). The pipeline's parent run is created here, so it names this
process; a cell's run is created inside the finetune task, so it names whichever process ran the
cell. Threads share this process's pid; worker processes do not."""
import os
import socket

import pytest
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from flows.pipeline import layerwise_pipeline
from tasks.tracking import PARENT_TAG, PROCESS_TAG, this_process

pytestmark = pytest.mark.slow

WORKERS = 2  # flows/ablation.py runner_for: a LocalCluster of this many single-threaded worker processes


def _host_and_pid(tag: str) -> tuple[str, int]:
    host, pid, _started = tag.split(":")
    return host, int(pid)


def test_ablation_cells_run_in_dask_worker_processes(prefect_harness, tracking):
    result = layerwise_pipeline("smoke-ablation", ["ablation.runner=dask", "ablation.seeds=[0]",
                                                   f"ablation.workers={WORKERS}"], data_root=str(mnist_root()))
    assert len(result.outcome.cells) == 4
    client = MlflowClient()
    runs = [client.get_run(cell["run_id"]) for cell in result.outcome.cells]
    for cell, run in zip(result.outcome.cells, runs):
        assert run.info.status == "FINISHED" and run.data.tags["layerwise.stage"] == "finetune"
        assert run.data.metrics["test_error"] == cell["test_error"]
        assert cell["trained_by"] == cell["run_id"]  # trained in this run, not reused from another

    # the tag names the process that starts a run: the parent run was started here
    [parent_id] = {run.data.tags[PARENT_TAG] for run in runs}
    assert client.get_run(parent_id).data.tags[PROCESS_TAG] == this_process()

    processes = {run.data.tags[PROCESS_TAG] for run in runs}
    assert this_process() not in processes, "a cell ran in the test process (a thread), not on a Dask worker"
    for host, pid in map(_host_and_pid, processes):  # other processes of this machine: the local cluster's
        assert host == socket.gethostname() and pid != os.getpid()
    # four cells over two idle single-threaded workers: each worker ran some, so two processes
    assert len(processes) == WORKERS, f"cells ran in {sorted(processes)}, expected {WORKERS} worker processes"
