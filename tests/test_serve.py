"""`layerwise serve` against a real `prefect server start`: a deployment per pipeline with the cron
of pipelines.yaml, an on-demand run of smoke that builds its MLflow run tree, schedules paused when
serve stops and resumed (with the file's changes) when it starts again."""
import signal
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import REPO
from servers import Process, base_env, prefect_server

pytestmark = pytest.mark.slow


def _write_config(path, pipelines: dict) -> None:
    smoke = yaml.safe_load((REPO / "pipelines.yaml").read_text())["pipelines"]["smoke"]
    path.write_text(yaml.safe_dump({"pipelines": {name: {**smoke, **extra} for name, extra in pipelines.items()}}))


def _deployments(client) -> dict:
    found = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["layerwise"])))
    return {d.name: d for d in found}


def _wait(predicate, timeout: float, what: str, proc: Process):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert proc.proc.poll() is None, f"serve exited {proc.proc.returncode}:\n{proc.output()[-4000:]}"
        assert time.monotonic() < deadline, f"{what} not within {timeout} s:\n{proc.output()[-4000:]}"
        time.sleep(1)
    return value


def _serve(config, api, log) -> Process:
    env = base_env(PREFECT_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY="2")
    return Process([sys.executable, "-m", "flows", "serve", "--config", str(config)], env, log)


def test_serve_deploys_schedules_and_runs_on_demand(tracking, tmp_path):
    config = tmp_path / "pipelines.yaml"
    _write_config(config, {
        "smoke": {"schedule": {"cron": "0 3 * * *", "timezone": "Europe/Berlin"}},
        "weekly": {"schedule": {"cron": "30 4 * * 0", "parameters": {"finetune.labels": 100},
                                "concurrency_limit": 2}},
        "adhoc": {},
    })
    with prefect_server(tmp_path / "prefect") as api, temporary_settings({PREFECT_API_URL: api}), \
            get_client(sync_client=True) as client:
        serve = _serve(config, api, tmp_path / "serve-1.log")
        try:
            serve.wait_for("serving 3 deployment(s)", timeout=120)
            deployments = _wait(lambda: len(_deployments(client)) == 3 and _deployments(client), 60,
                                "three deployments", serve)
            smoke, weekly, adhoc = deployments["smoke"], deployments["weekly"], deployments["adhoc"]
            assert [(s.schedule.cron, s.schedule.timezone) for s in smoke.schedules] == [("0 3 * * *", "Europe/Berlin")]
            assert [s.schedule.cron for s in weekly.schedules] == ["30 4 * * 0"]
            assert weekly.parameters["overrides"] == ["finetune.labels=100"]
            assert weekly.global_concurrency_limit.limit == 2 and smoke.global_concurrency_limit.limit == 1
            assert adhoc.schedules == [] and not smoke.paused

            flow_run = run_deployment("layerwise/smoke", timeout=0)
            final = _wait(lambda: (run := client.read_flow_run(flow_run.id)).state.is_final() and run, 300,
                          "the on-demand smoke run", serve)
            assert final.state.is_completed(), f"{final.state}\n{serve.output()[-4000:]}"
        finally:
            assert serve.stop(signal.SIGTERM) is not None

        assert all(d.paused for d in _deployments(client).values()), "stopping serve pauses the schedules"

        mlf = MlflowClient()
        experiment = mlf.get_experiment_by_name("smoke")
        [parent] = mlf.search_runs([experiment.experiment_id], "tags.`layerwise.pipeline` = 'smoke' and "
                                   "attributes.status = 'FINISHED'", max_results=10)[-1:]
        assert parent.data.tags["prefect.flow_run_id"] == str(flow_run.id)
        children = mlf.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert sorted(run.data.tags["layerwise.stage"] for run in children) == [
            "finetune", "pretrain-1", "pretrain-2", "pretrain-3"]

        # the file changes: weekly removed, smoke's cron moved; serving again applies it and resumes
        _write_config(config, {"smoke": {"schedule": {"cron": "15 1 * * *"}}, "adhoc": {}})
        serve = _serve(config, api, tmp_path / "serve-2.log")
        try:
            serve.wait_for("serving 2 deployment(s)", timeout=120)
            assert "removed deployments no longer in pipelines.yaml: weekly" in serve.output()
            deployments = _wait(lambda: (d := _deployments(client)) and not d["smoke"].paused and d, 60,
                                "smoke resumed", serve)
            assert set(deployments) == {"smoke", "adhoc"}
            assert [s.schedule.cron for s in deployments["smoke"].schedules] == ["15 1 * * *"]
        finally:
            serve.stop(signal.SIGINT)
        assert all(d.paused for d in _deployments(client).values()), "Ctrl-C pauses the schedules too"


def test_serve_refuses_an_invalid_file_like_validate(tmp_path):
    config = tmp_path / "pipelines.yaml"
    _write_config(config, {"smoke": {"schedule": {"cron": "every night"}}})
    import subprocess

    for command in ("serve", "validate"):
        done = subprocess.run([sys.executable, "-m", "flows", command, "--config", str(config)], cwd=REPO,
                              env=base_env(PREFECT_API_URL="http://127.0.0.1:9/api"), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "pipeline 'smoke': schedule.cron" in done.stderr and "Invalid cron string" in done.stderr


def test_serve_without_a_server_says_how_to_start_one(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "flows", "serve"], cwd=REPO, env=base_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "make server" in done.stderr and "PREFECT_API_URL" in done.stderr
