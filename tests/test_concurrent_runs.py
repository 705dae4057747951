"""Two pipelines at once in two processes against one store, on a machine whose cores are all
busy with other work: both start (the temporary Prefect API included) and complete, separate run trees."""
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from servers import base_env

pytestmark = pytest.mark.slow


def test_two_runs_at_once_keep_separate_complete_run_trees(tracking, tmp_path):
    env = base_env(PREFECT_HOME=str(tmp_path / "prefect"))
    commands = [["run", "smoke"], ["run", "smoke", "--set", "finetune.seed=1"]]
    # one busy loop per core beside the runs, as an ablation or a scheduled run would be
    load = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(os.cpu_count() or 2)]
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "flows", *args], cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for args in commands]
        outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]

    client = MlflowClient()
    experiment = client.get_experiment_by_name("smoke")
    parents = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    seeds = set()
    for parent in parents:
        children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        stages = {run.data.tags["layerwise.stage"]: run for run in children}
        assert sorted(stages) == ["finetune", "pretrain-1", "pretrain-2", "pretrain-3"]
        assert all(run.info.status == "FINISHED" for run in children)
        for index in (1, 2, 3):
            run = stages[f"pretrain-{index}"]
            # a stage the other run finished first is reused: the weights stay with the run that trained them
            trained_by = run.data.tags.get("layerwise.pretrain_run_id", run.info.run_id)
            assert [a.path for a in client.list_artifacts(trained_by)] == [f"pretrain-{index}.pt"]
        assert client.list_artifacts(stages["finetune"].info.run_id, "classifier")
        assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == ["pipeline.yaml", "report.md"]
        seeds.add(stages["finetune"].data.tags["layerwise.seed"])
    assert seeds == {"0", "1"}
    assert len(client.search_model_versions("name='smoke-classifier'")) == 2
    assert not list((tmp_path / "work" / "runs").iterdir()), "each run cleans its own scratch folder"
