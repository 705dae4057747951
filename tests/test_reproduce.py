"""`layerwise reproduce` for real on a smoke claims file: the claim's command runs as its own process
into a temporary sqlite store, each claim is checked against the value measured now (exit 1 when one
is outside its tolerance), the marked sections of a results page are rewritten from the store, and a
second call resumes: the finished command is not run again."""
import json
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from flows.cli import main
from flows.reproduce import Ticker, job_key, machine
from layerwise.paths import DEFAULT_CONFIG
from layerwise.report.claims import Job, jobs, read_claims
from layerwise.report.sections import section

pytestmark = pytest.mark.slow

HEADER = "figure,command,pipeline,args,metric,value,tolerance,where"


def _parents(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    return [run for run in client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
            if "mlflow.parentRunId" not in run.data.tags]


def test_reproduce_runs_checks_writes_and_resumes(tmp_path, capsys, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LAYERWISE_WORKDIR", str(tmp_path / "work"))
    claims = tmp_path / "claims.csv"
    claims.write_text(f"{HEADER}\n"
                      "smoke: test error within,run,smoke,,test_error,50.00,50.1,x\n"
                      "\"smoke: test error, stated wrong\",run,smoke,,test_error,-5.00,0.1,x\n"
                      "smoke: whole command,run,smoke,,command_seconds,600,<=x6,x\n")
    results = tmp_path / "results.md"
    results.write_text("# results\n\n<!-- report:reproduce -->\nold\n<!-- /report -->\n\nkept by hand\n\n"
                       "<!-- report:smoke -->\nold\n<!-- /report -->\n")
    argv = ["reproduce", "--claims", str(claims), "--data-root", str(mnist_root()), "--into", str(results)]
    # an earlier call was killed 700 s into this command (its heartbeat had written 700 s) after a
    # first try of 1000 s: the wall checked is every try's, summed
    [job] = jobs(read_claims(claims))
    key = job_key(job, str(DEFAULT_CONFIG), str(claims))
    state = tmp_path / "work" / "reproduce" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"unfinished": {uri: {key: {"seconds": 1000.0, "tries": 1, "running": 700.0,
                                                            "started": "2026-01-02T03:04:05Z"}}}}))

    assert main(argv) == 1  # one claim is outside its tolerance
    out = capsys.readouterr().out
    assert "2 of 3 claim(s) within tolerance, 1 outside, 0 not measured" in out
    assert "[1/1] `layerwise run smoke` done in" in out and "over its 3 tries" in out
    (parent,) = _parents(uri)
    error = parent.data.metrics["test_error"]
    assert f"{error:.2f}" in out  # the value measured now, in the table
    record = json.loads(state.read_text())[uri][key]
    assert record["tries"] == 3 and 1700 < record["seconds"] < 1700 + 900 and record["started"] == "2026-01-02T03:04:05Z"
    assert record["machine"] == machine() and not json.loads(state.read_text())["unfinished"][uri]
    text = results.read_text()
    assert "kept by hand" in text and "old" not in text
    summary = section(text, "reproduce")
    assert summary.startswith("_Written by `make reproduce`, never by hand: its last full call, its commands run "
                              "between 2026-01-02 03:04 and ")
    assert f"on {machine()}; walls summed over tries: `layerwise run smoke` (3 tries)" in summary
    assert f"| {record['seconds']:.1f} | <=x6 | yes |" in summary
    assert parent.info.run_id in section(text, "smoke")

    assert main(argv) == 1  # resumed: nothing runs again, the same verdict
    out = capsys.readouterr().out
    assert "finished by an earlier call" in out and "0 to run" in out
    assert len(_parents(uri)) == 1

    # the values measured become the stated ones (as many decimals); the wall's bound follows its value
    before = claims.read_text()
    assert main(argv + ["--restate"]) == 0
    out = capsys.readouterr().out
    assert f"claims.csv:3: smoke: test error, stated wrong: -5.00 -> {error:.2f} (stated in x)" in out
    assert "3 claim(s) restated, 0 unchanged, 0 not measured" in out
    assert claims.read_text() == before.replace("50.00", f"{error:.2f}").replace("-5.00", f"{error:.2f}").replace(
        ",600,", f",{record['seconds']:.0f},")
    assert main(argv) == 0  # every claim within its tolerance now
    assert "3 of 3 claim(s) within tolerance" in capsys.readouterr().out
    assert len(_parents(uri)) == 1


def test_a_running_command_writes_its_seconds_as_it_goes(monkeypatch):
    """The heartbeat a killed call leaves behind: the seconds so far, every HEARTBEAT_S."""
    import flows.reproduce

    monkeypatch.setattr(flows.reproduce, "HEARTBEAT_S", 0.1)
    beats = []
    with Ticker(3600, Job("run", "smoke", ()), None, 0, heartbeat=beats.append):
        time.sleep(1.0)
    assert len(beats) >= 3 and beats == sorted(beats) and 0.05 < beats[0] < beats[-1] <= 1.0


def test_a_reproduce_started_in_the_background_stops_on_sigterm(tmp_path):
    """`make reproduce &` in a script starts with SIGINT ignored, and so does every command it starts:
    the running command is stopped with SIGTERM (its runs end KILLED), and the stopped try's seconds
    are kept for the wall of the try that finishes it."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    claims = tmp_path / "claims.csv"
    claims.write_text(f"{HEADER}\nsmoke: whole command,run,smoke,,command_seconds,600,<=x6,x\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "LAYERWISE_WORKDIR": str(tmp_path / "work")}
    process = subprocess.Popen([sys.executable, "-m", "flows", "reproduce", "--claims", str(claims), "--data-root",
                                str(mnist_root())], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Task run 'pretrain-1'" in line:  # the command is training
            break
    else:
        raise AssertionError("".join(lines[-30:]))
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        rest, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("reproduce did not stop within 90 s of SIGTERM") from None
    assert process.returncode == 130 and time.monotonic() - started < 60, rest[-3000:]
    assert "interrupted during `layerwise run smoke`" in rest
    (killed,) = [r for r in MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("smoke").experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert killed.info.status == "KILLED"
    [job] = jobs(read_claims(claims))
    unfinished = json.loads((tmp_path / "work" / "reproduce" / "state.json").read_text())["unfinished"][uri]
    tried = unfinished[job_key(job, str(DEFAULT_CONFIG), str(claims))]
    assert tried["tries"] == 1 and tried["seconds"] > 0 and "running" not in tried
