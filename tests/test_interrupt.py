"""Interrupts as users and schedulers send them, in the middle of a stage (or of an ablation's
cells): exit 130 within 10 s, every open run KILLED, finished stages FINISHED, no process left
behind (the temporary Prefect API included). A SIGKILL leaves nothing listening either."""
import os
import signal
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from servers import run_until

pytestmark = pytest.mark.slow

EXIT_WITHIN_S = 10


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(procs: list[psutil.Process], timeout: float = 15) -> None:
    """The run's children (the temporary Prefect API, Dask workers) end with it."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    assert not alive, f"left behind: {[' '.join(p.cmdline()[:6]) for p in alive]}"


def statuses() -> dict[str, str]:
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    return {run.data.tags.get("layerwise.stage", "parent"): run.info.status for run in runs}


def interrupt(proc, sig: int, group: bool) -> tuple[float, str]:
    """Sends sig to the run's process group (what a terminal's Ctrl-C does) or to its pid (what a
    scheduler does); returns the seconds until it exited and what it printed meanwhile."""
    sent = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, sig)
    rest, _ = proc.communicate(timeout=120)
    return time.monotonic() - sent, rest


@pytest.mark.parametrize("sig,group", [(signal.SIGINT, True), (signal.SIGINT, False), (signal.SIGTERM, True),
                                       (signal.SIGTERM, False)],
                         ids=["ctrl-c-group", "sigint-pid", "sigterm-group", "sigterm-pid"])
def test_an_interrupt_ends_every_open_run_killed_and_leaves_no_process(tracking, sig, group):
    proc, _ = run_until(["run", "smoke", "--set", "layers.1.epochs=100000", "--data-root", str(mnist_root())],
                        "[pretrain-2] epoch ")
    children = descendants(proc.pid)
    assert any("prefect.server.api.server" in " ".join(child.cmdline()) for child in children)
    try:
        seconds, rest = interrupt(proc, sig, group)
    finally:
        proc.kill()
    print(f"{signal.Signals(sig).name} to the {'group' if group else 'pid'}: exit {proc.returncode} "
          f"in {seconds:.1f} s")
    assert proc.returncode == 130, rest[-5000:]
    # a rare slow exit (61 s, twice in many full runs, never on demand) shows what the run did meanwhile
    assert seconds < EXIT_WITHIN_S, rest[-5000:]
    assert statuses() == {"parent": "KILLED", "pretrain-1": "FINISHED", "pretrain-2": "KILLED"}
    assert_all_gone(children)


def ctrl_c_when(args: list[str], line: str) -> tuple[list[psutil.Process], str]:
    """Runs the CLI with args until it prints line, then presses Ctrl-C (SIGINT to its group): it
    must exit 130 within EXIT_WITHIN_S. Returns its children and what it printed meanwhile."""
    proc, _ = run_until([*args, "--data-root", str(mnist_root())], line)
    children = descendants(proc.pid)
    try:
        seconds, rest = interrupt(proc, signal.SIGINT, group=True)
    finally:
        proc.kill()
    assert proc.returncode == 130 and seconds < EXIT_WITHIN_S, f"exit {proc.returncode} after {seconds:.1f} s\n{rest[-5000:]}"
    return children, rest


def test_ctrl_c_stops_the_cells_running_in_worker_threads(tracking):
    """An ablation's cells run in worker threads, which no signal reaches: they stop at their next
    batch, and every open cell run ends KILLED."""
    children, _ = ctrl_c_when(["run", "smoke-ablation", "--set", "finetune.epochs=100000"], "[finetune ")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("smoke-ablation").experiment_id])
    open_runs = [run for run in runs if run.info.status == "RUNNING"]
    assert not open_runs, [run.info.run_name for run in open_runs]
    cells = [run for run in runs if run.data.tags.get("layerwise.stage") == "finetune"]
    assert cells and {run.info.status for run in cells} <= {"KILLED", "FINISHED"}
    assert "KILLED" in {run.info.status for run in cells}
    assert_all_gone(children)


def test_sigkill_leaves_nothing_listening(tracking):
    proc, _ = run_until(["run", "smoke", "--set", "layers.1.epochs=100000", "--data-root", str(mnist_root())],
                        "[pretrain-2] epoch ")
    children = descendants(proc.pid)
    ports = {conn.laddr.port for child in children for conn in child.net_connections("inet")
             if conn.status == psutil.CONN_LISTEN}
    assert ports, "the temporary Prefect API listens on a loopback port"
    proc.kill()  # SIGKILL: no handler, no atexit
    proc.wait()
    assert_all_gone(children)
    listening = {conn.laddr.port for conn in psutil.net_connections("inet") if conn.status == psutil.CONN_LISTEN}
    assert not ports & listening


def test_ctrl_c_stops_a_sweeps_trial_which_is_asked_again(tracking, tmp_path):
    """A sweep's trial runs in a worker thread: Ctrl-C stops it at its next batch, no error but the
    interrupt is printed, the trial is failed as interrupted (to be asked again) and every open run
    ends KILLED."""
    import optuna
    from optuna.trial import TrialState

    children, rest = ctrl_c_when(["sweep", "smoke-sweep", "--set", "finetune.epochs=100000"],
                                 "Task run 'finetune-trial-0' - [finetune")
    assert "Traceback" not in rest and "FileNotFoundError" not in rest, rest[-5000:]
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    [summary] = optuna.get_all_study_summaries(storage)
    [trial] = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["died"] == "interrupted"
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("smoke-sweep").experiment_id])
    assert not [run.info.run_name for run in runs if run.info.status == "RUNNING"]
    assert "KILLED" in {run.info.status for run in runs}
    assert_all_gone(children)
