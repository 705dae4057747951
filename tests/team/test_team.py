"""Team mode for real (make test-team): `python -m team up` starts PostgreSQL, an MLflow server with
MLflow's sign-in (artifacts proxied to moto's S3 server) and a Prefect server, on loopback ports;
then, on the smoke pipelines: a pipeline through `layerwise serve`, sign-in and permissions, two
`layerwise sweep` workers sharing one study (one SIGKILLed mid-trial from another "host"), 8
ablation cells at once on a Dask cluster (a scheduler and its workers, as docs/operating.md starts
them) with every record counted against what was sent, the
secrets found nowhere but the env file, and `team down` leaving no process behind."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import optuna
import psutil
import pytest
import requests
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import REPO
from servers import free_port
from team_servers import BUCKET, TeamUnderTest, s3_keys, team_up  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

SENT = Path(__file__).with_name("sent.py")


def _client(team: TeamUnderTest, user_file: Path | None = None) -> MlflowClient:
    """A client signed in as the env file's user; MLflow reads the credentials from the environment
    at each request, so it stays that user until the next _client call."""
    env = team.env(user_file)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # MlflowClient reads them from here
        os.environ[key] = env[key]
    return MlflowClient(env["MLFLOW_TRACKING_URI"])


def _secrets(team: TeamUnderTest) -> dict[str, str]:
    from team.layout import read_env

    env = read_env(team.env_file)
    return {"admin password": env["MLFLOW_TRACKING_PASSWORD"], "database password": env["PGPASSWORD"],
            "Prefect auth": env["PREFECT_API_AUTH_STRING"].split(":", 1)[1]}


def _pids(team: TeamUnderTest) -> dict[str, int]:
    from team import postgres
    from team.layout import Team

    layout = Team(team.root)
    return {"postgres": postgres.pid(layout),
            **{s: int(layout.pidfile(s).read_text().split()[0]) for s in ("mlflow", "prefect")}}


def _wait(proc, timeout: float, what: str) -> int:
    try:
        return proc.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.stop(signal.SIGKILL)
        raise AssertionError(f"{what} did not end within {timeout} s:\n{proc.output()[-4000:]}") from None


def test_without_postgresql_one_line_names_the_package(monkeypatch, tmp_path, capsys):
    from team import __main__ as cli
    from team import postgres

    monkeypatch.setenv("LAYERWISE_TEAM_DIR", str(tmp_path / "team"))
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres, "DEBIAN_PROGRAMS", tmp_path / "no-postgresql")
    assert cli.main(["up"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install postgresql" in err and "initdb" in err, err
    assert not (tmp_path / "team").exists()  # nothing written


def test_up_on_loopback_and_a_second_up_reports_what_runs(team_up):
    assert "team: started: postgres (pid" in team_up.up_output, team_up.up_output
    for name in ("env", "server.env"):
        assert (team_up.root / name).stat().st_mode & 0o777 == 0o600
    env = team_up.env()
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{team_up.ports['mlflow']}"
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{team_up.ports['prefect']}/api"
    assert env["LAYERWISE_SWEEP_STORAGE"] == f"postgresql://layerwise@127.0.0.1:{team_up.ports['postgres']}/optuna"

    pids = _pids(team_up)
    listening = set()
    for pid in pids.values():  # every listener of the team's processes binds loopback only
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            listening |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet") if c.status == "LISTEN"}
    assert {port for _, port in listening} >= {team_up.ports[s] for s in ("postgres", "mlflow", "prefect")}
    assert {ip for ip, _ in listening} <= {"127.0.0.1", "::1"}, listening

    again = team_up.team("up")
    assert again.returncode == 0, again.stderr
    assert f"team: already running: postgres (pid {pids['postgres']}), mlflow (pid {pids['mlflow']}), " \
           f"prefect (pid {pids['prefect']})" in again.stdout and "started" not in again.stdout, again.stdout


def test_sign_in_pipelines_serve_and_permissions(team_up, tmp_path):
    url = team_up.env()["MLFLOW_TRACKING_URI"]
    assert requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30).status_code == 401
    assert requests.get(url, timeout=30).status_code == 401  # the UI too
    admin = _secrets(team_up)["admin password"]
    page = requests.get(url, auth=("admin", admin), timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    prefect = team_up.env()["PREFECT_API_URL"]
    assert requests.post(f"{prefect}/flows/filter", json={}, timeout=30).status_code == 401

    for name in ("alice", "bob"):
        made = team_up.team("user", name, timeout=300)
        assert made.returncode == 0, made.stderr
        assert (team_up.root / "users" / f"{name}.env").stat().st_mode & 0o777 == 0o600
    alice, bob = (team_up.root / "users" / f"{n}.env" for n in ("alice", "bob"))

    # alice serves the smoke pipeline (a file holding it alone) and runs it on demand through Prefect
    config = tmp_path / "pipelines.yaml"
    smoke = yaml.safe_load((REPO / "pipelines.yaml").read_text())["pipelines"]["smoke"]
    config.write_text(yaml.safe_dump({"pipelines": {"smoke": smoke}}))
    serve = team_up.process("serve", [sys.executable, "-m", "flows", "serve", "--config", str(config)],
                            team_up.env(alice, PREFECT_RUNNER_POLL_FREQUENCY="2"))
    try:
        serve.wait_for("serving 1 deployment(s)", timeout=400)
        deploy = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "layerwise/smoke", "--watch",
                                 "--watch-timeout", "900"], cwd=REPO, env=team_up.env(alice), capture_output=True,
                                text=True, timeout=950)
        assert deploy.returncode == 0 and "Completed" in deploy.stdout, deploy.stdout[-3000:] + serve.output()[-3000:]
    finally:
        serve.stop(signal.SIGTERM)

    mlf = _client(team_up, alice)
    experiment = mlf.get_experiment_by_name("smoke")
    [parent] = [r for r in mlf.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"
    mlf.set_tag(parent.info.run_id, "checked", "by alice")  # her experiment: she writes to it
    children = mlf.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["layerwise.stage"] for r in children) == ["finetune", "pretrain-1", "pretrain-2",
                                                                       "pretrain-3"]
    assert [a.path for a in mlf.list_artifacts(parent.info.run_id)] == ["pipeline.yaml", "report.md"]
    keys = s3_keys(team_up)  # artifacts went through the server to the S3 store
    for name in ("pipeline.yaml", "report.md"):
        assert any(k.startswith("artifacts/") and k.endswith(f"/{name}") for k in keys), keys[:20]
    assert mlf.get_model_version_by_alias("smoke-classifier", "champion").version == "1"

    reader = _client(team_up, bob)  # bob reads alice's experiment...
    assert reader.get_run(parent.info.run_id).data.params["finetune.labels"] == "200"
    assert len(reader.search_runs([experiment.experiment_id])) == 5
    for write in (lambda: reader.create_run(experiment.experiment_id),  # ...and cannot write to it
                  lambda: reader.set_tag(parent.info.run_id, "bob", "was here"),
                  lambda: reader.log_metric(parent.info.run_id, "bob", 1.0),
                  lambda: reader.set_experiment_tag(experiment.experiment_id, "bob", "was here")):
        with pytest.raises(MlflowException, match="403|PERMISSION_DENIED"):
            write()
    assert "bob" not in _client(team_up, alice).get_run(parent.info.run_id).data.tags
    granted = team_up.team("grant", "bob", "smoke", "EDIT", timeout=300)
    assert granted.returncode == 0, granted.stderr
    reader = _client(team_up, bob)
    reader.set_terminated(reader.create_run(experiment.experiment_id, run_name="bob's").info.run_id)


def _worker(team: TeamUnderTest, name: str, args: list[str], host: str | None = None):
    command = [sys.executable, "-m", "flows", *args]
    if host:  # a worker on "another host": its own host name, so no pid of it can be checked from here
        command = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *command]
    return team.process(name, command, team.env())


def test_two_sweep_workers_share_one_study_and_a_killed_ones_trial_is_asked_again(team_up):
    trials = 4
    args = ["sweep", "smoke-sweep", "--set", f"sweep.trials={trials}", "--set", "finetune.epochs=300",
            "--set", "sweep.heartbeat=3", "--set", "sweep.grace_period=30"]
    a = _worker(team_up, "sweep-a", args)
    a.wait_for("trials finished", timeout=600)
    b = _worker(team_up, "sweep-b", args, host="worker-b")
    b.wait_for("Task run 'finetune-trial-", timeout=600)  # b is in the middle of a trial
    team_up.look_at_processes()
    os.killpg(b.proc.pid, signal.SIGKILL)  # nothing of b runs on: its trial stays RUNNING, its heartbeat stops
    b.proc.wait()
    assert _wait(a, 900, "sweep worker a") == 0, a.output()[-4000:]
    log = a.output()
    assert "did not finish (their process died or was interrupted): marked FAIL and asked again" in log, log[-4000:]

    env = team_up.env()
    os.environ["PGPASSWORD"] = env["PGPASSWORD"]  # libpq reads it, as a teammate's shell has it
    storage = env["LAYERWISE_SWEEP_STORAGE"]
    [summary] = [s for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith("smoke-sweep-")]
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    by_state = Counter(t.state for t in study.trials)
    assert by_state[TrialState.COMPLETE] == trials and by_state[TrialState.FAIL] == 1, by_state
    [dead] = [t for t in study.trials if t.state == TrialState.FAIL]
    assert dead.user_attrs["process"].startswith("worker-b:")  # b's, found by its silent heartbeat
    [again] = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert again.state == TrialState.COMPLETE and again.params == dead.params
    assert again.user_attrs["process"].startswith(socket.gethostname() + ":")  # a asked it again

    mlf = _client(team_up)
    experiment = mlf.get_experiment_by_name("smoke-sweep")
    runs = mlf.search_runs([experiment.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # one sweep parent for both workers
    assert parent.data.tags["layerwise.kind"] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_finished"] == trials
    trial_runs = [r for r in runs if r.data.tags.get("layerwise.kind") == "trial"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trial_runs)
    numbers = Counter(r.data.tags["layerwise.trial"] for r in trial_runs)
    assert set(numbers.values()) == {1}, numbers  # no trial ran twice
    states = {r.data.tags["layerwise.trial"]: r.info.status for r in trial_runs}
    assert states == {str(t.number): "KILLED" if t.number == dead.number else "FINISHED" for t in study.trials}
    below_dead = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in
                  {t.info.run_id for t in trial_runs if t.data.tags["layerwise.trial"] == str(dead.number)}]
    assert below_dead and {r.info.status for r in below_dead} <= {"KILLED", "FINISHED"}  # stages it had finished
    # both workers ran trials, each its own
    assert {r.data.tags["layerwise.process"].split(":")[0] for r in trial_runs} == {socket.gethostname(), "worker-b"}
    [final] = [r for r in runs if r.data.tags.get("layerwise.sweep_final") == "true"]
    assert final.data.tags["mlflow.parentRunId"] == parent.info.run_id and final.info.status == "FINISHED"


def test_runs_at_once_register_the_same_dataset_on_postgresql(team_up):
    """Cells running at once log the same validation and test splits: on PostgreSQL the loser of the
    dataset insert gets a UniqueViolation (its message unlike SQLite's), and must link the dataset
    the winner stored instead of failing its cell."""
    import threading

    from tasks.datasets import Split, log_datasets

    mlf = _client(team_up)
    experiment = mlf.create_experiment("datasets-at-once")
    runs = [mlf.create_run(experiment).info.run_id for _ in range(8)]
    errors = []
    for round_ in range(6):  # a fresh dataset each round: every round is a race for its insert
        splits = [Split("validation", f"race {round_} validation (10 images)", f"{round_:012d}", 10)]
        start = threading.Barrier(len(runs))

        def log(run_id, splits=splits, start=start):
            start.wait()
            try:
                log_datasets(mlf, run_id, str(REPO), splits)
            except Exception as exc:  # noqa: BLE001 - collected: every thread's failure is shown
                errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not errors, errors[:3]
    for run_id in runs:
        assert len(mlf.get_run(run_id).inputs.dataset_inputs) == 6


def test_eight_cells_at_once_on_dask_every_run_param_and_metric_arrives(team_up, tmp_path):
    port, sent_dir = free_port(), tmp_path / "sent"
    sent_dir.mkdir()
    env = team_up.env(LAYERWISE_SENT_DIR=str(sent_dir))
    scheduler = team_up.process("dask-scheduler", [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1",
                                                   "--port", str(port), "--no-dashboard"], env)
    # 2 worker processes of 4 threads: 8 cells at once, each logging on its own, with a quarter of
    # the start-up (every worker process imports torch, Prefect and MLflow) of 8 processes
    workers = team_up.process("dask-workers", [sys.executable, "-m", "dask", "worker", f"tcp://127.0.0.1:{port}",
                                               "--nworkers", "2", "--nthreads", "4", "--no-dashboard",
                                               "--memory-limit", "0", "--preload", str(SENT)], env)
    try:
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=120) as dask:
            dask.wait_for_workers(2, timeout=600)
        run = team_up.process("ablation", [sys.executable, str(SENT), "run", "smoke-ablation", "--set",
                                           "ablation.runner=dask", "--set", f"ablation.address=tcp://127.0.0.1:{port}",
                                           "--set", "ablation.workers=8"], env)
        team_up.look_at_processes()
        if _wait(run, 900, "the ablation") != 0:  # why a cell failed: its grid line, the workers' errors
            why = [line for line in (run.output() + workers.output()).splitlines()
                   if "failed" in line or "Error" in line or "Timeout" in line]
            sent_failures = [line for path in sent_dir.glob("*.jsonl") for line in path.read_text().splitlines()
                             if '"failed"' in line]
            raise AssertionError("\n".join(why[-40:] + sent_failures[:10]) + "\n" + run.output()[-2000:])
    finally:
        workers.stop(signal.SIGTERM)
        scheduler.stop(signal.SIGTERM)

    records = [json.loads(line) for path in sent_dir.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert not [r for r in records if "failed" in r], [r for r in records if "failed" in r][:5]
    runs = {r["run_id"] for r in records if r["call"] == "create_run"}
    params, metrics = defaultdict(dict), defaultdict(Counter)
    for record in records:
        params[record.get("run_id")].update(dict(record.get("params", [])))
        for key, value, timestamp, step in record.get("metrics", []):
            metrics[(record["run_id"], key)][(value, timestamp, step)] += 1

    mlf = _client(team_up)
    experiment = mlf.get_experiment_by_name("smoke-ablation")
    cells = mlf.search_runs([experiment.experiment_id], "tags.`layerwise.stage` = 'finetune'", max_results=100)
    assert len(cells) == 8 and all(c.info.status == "FINISHED" for c in cells)
    processes = {c.data.tags["layerwise.process"] for c in cells}  # the Dask workers', not the run's
    [driver] = {r.data.tags["layerwise.process"] for r in mlf.search_runs(
        [experiment.experiment_id], "tags.`layerwise.stage` = 'pretrain-1'")}
    assert len(processes) == 2 and driver not in processes, (processes, driver)
    spans = [(c.info.start_time, c.info.end_time) for c in cells]
    at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert at_once == 8, f"at most {at_once} cells ran at once"

    arrived = {"runs": 0, "params": 0, "metrics": 0}
    for run_id in runs:
        stored = mlf.get_run(run_id)
        assert stored.data.params == params[run_id], run_id
        arrived["runs"] += 1
        arrived["params"] += len(stored.data.params)
    for (run_id, key), points in metrics.items():
        stored = Counter((m.value, m.timestamp, m.step) for m in mlf.get_metric_history(run_id, key))
        assert set(stored) == set(points), (run_id, key)
        arrived["metrics"] += len(stored)
    sent = {"runs": len(runs), "params": sum(len(p) for k, p in params.items() if k in runs),
            "metrics": sum(len(p) for p in metrics.values())}
    print(f"\nsent {sent}, arrived {arrived} ({sum(c.total() for c in metrics.values())} metric values sent in all)")
    assert arrived == sent and sent["runs"] >= 8 + 3 and sent["metrics"] > 100


def test_the_secrets_are_nowhere_but_the_env_file(team_up):
    secrets = _secrets(team_up)
    team_up.look_at_processes()
    mlf = _client(team_up)
    logged = []
    for experiment in mlf.search_experiments():
        for run in mlf.search_runs([experiment.experiment_id], max_results=5000):
            logged += [*run.data.params.values(), *run.data.tags.values()]
        logged += list(experiment.tags.values())
    texts = {"MLflow params and tags": "\n".join(logged), "the process list": "\n".join(team_up.command_lines)}
    files = [*team_up.logs.rglob("*.log"), *(team_up.root / "logs").glob("*.log"),
             *(REPO / "docs").rglob("*.md"), REPO / "README.md"]
    texts.update({str(path): path.read_text(errors="replace") for path in files})
    assert len(logged) > 100 and len(team_up.command_lines) > 10
    for what, secret in secrets.items():
        assert [where for where, text in texts.items() if secret in text] == [], what
    holders = [p for p in team_up.root.rglob("*") if p.is_file() and p.name != "postmaster.pid"
               and not p.is_relative_to(team_up.root / "postgres") and secrets["admin password"] in p.read_text(errors="ignore")]
    assert holders == [team_up.root / "env"], holders


def test_down_stops_everything_by_pid_and_keeps_the_data(team_up):
    pids = _pids(team_up)
    processes = [psutil.Process(pid) for pid in pids.values()]
    processes += [child for proc in processes for child in proc.children(recursive=True)]
    done = team_up.team("down", timeout=600)
    assert done.returncode == 0, done.stderr
    for service, pid in pids.items():
        assert f"{service} (pid {pid})" in done.stdout, done.stdout
    time.sleep(1)
    left = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(p.pid, p.cmdline()) for p in left]
    assert (team_up.root / "postgres" / "PG_VERSION").exists() and (team_up.root / "env").exists()
    assert team_up.team("status").stdout.count("stopped") == 3
