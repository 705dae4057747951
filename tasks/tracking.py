"""MLflow bookkeeping with explicit run ids (the fluent API's active run is per thread).

The public contract (docs/mlflow.md): experiment = pipeline name, one parent run per execution
tagged layerwise.pipeline, one nested child run per stage tagged layerwise.stage.
"""
from __future__ import annotations

import contextlib
import socket
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import unquote

import mlflow
import psutil
import requests
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from layerwise.errors import Pruned
from layerwise.store.locks import file_lock
from layerwise.paths import default_tracking_uri
from tasks.uninterrupted import UninterruptedClient, interrupts_held

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # opens the UI on training runs, not the GenAI overview
PARENT_TAG = "mlflow.parentRunId"
PIPELINE_TAG = "layerwise.pipeline"
STAGE_TAG = "layerwise.stage"
REUSED_TAG = "layerwise.reused"  # a stage or cell found in the store, linked to the run that trained it
PROCESS_TAG = "layerwise.process"  # host:pid:start-time of the process that owns a run
MAX_PARAMS_PER_CALL = 100


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any training starts."""


def tracking_uri() -> str:
    return default_tracking_uri()


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a sqlite:/// URI (absolute, or relative to the working directory)."""
    prefix = "sqlite:///"
    return Path(unquote(uri[len(prefix):])).resolve() if uri.startswith(prefix) else None


def artifact_root(uri: str) -> Optional[str]:
    """Artifacts of a sqlite store live beside the database (mlruns/ by default); a tracking
    server decides for itself."""
    db = sqlite_path(uri)
    return (db.parent / "artifacts").as_uri() if db else None


def client() -> MlflowClient:
    """The store's client; a sqlite store's calls are not cut in half by an interrupt (which would
    leave the database locked: tasks/uninterrupted.py)."""
    uri = tracking_uri()
    db = sqlite_path(uri)
    if db:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return UninterruptedClient(MlflowClient(uri)) if db else MlflowClient(uri)  # type: ignore[return-value]


def store_calls_held() -> contextlib.AbstractContextManager:
    """Around store work done outside client() (MLflow's fluent log_model): interrupts held where
    the store is sqlite, as client() holds them for its calls."""
    return interrupts_held() if sqlite_path(tracking_uri()) else contextlib.nullcontext()


@contextlib.contextmanager
def store_setup_lock(uri: str) -> Iterator[None]:
    """MLflow creates a new sqlite store's tables on first use; two processes doing it at once
    collide ('duplicate column name'), so the first use of a sqlite store is serialised."""
    db = sqlite_path(uri)
    with file_lock(db.with_name(db.name + ".lock")) if db else contextlib.nullcontext():
        yield


def probe_writes(uri: str) -> None:
    """A store that reads but cannot write (a read-only database file or folder) would pass a read
    and fail at the run's first log call with pages of tracebacks; a write rolled back tells now."""
    db = sqlite_path(uri)
    if db is None:
        return  # a server decides for itself; its errors come back as one line too
    if db.exists():
        with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=30)) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("CREATE TABLE layerwise_write_probe (x)")
            finally:
                con.execute("ROLLBACK")
    artifacts = db.parent / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=artifacts, prefix=".layerwise-write-probe-"):
        pass


def check_store() -> str:
    """Fail fast with one clear line when the store is unusable (no hour of compute lost to a
    logging failure at the end): a server gets a quick health probe before MLflow's own retries,
    then every store must answer a query and take a write."""
    uri = tracking_uri()
    try:
        if uri.startswith(("http://", "https://")):
            requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
        with store_setup_lock(uri):
            client().search_experiments(max_results=1)
        probe_writes(uri)
    except Exception as exc:  # noqa: BLE001 - any failure here means the store can't be used
        first_line = (str(exc).splitlines() or [""])[0]
        raise TrackingError(f"MLflow tracking store {uri} is not usable ({type(exc).__name__}: {first_line}). "
                            f"Start it (make mlflow-server) or point MLFLOW_TRACKING_URI elsewhere.") from None
    return uri


def ensure_experiment(mlf: MlflowClient, name: str) -> str:
    experiment = mlf.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != "custom_model_development":
            mlf.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
        return experiment.experiment_id
    root = artifact_root(tracking_uri())
    location = f"{root}/{name}" if root else None
    try:
        return mlf.create_experiment(name, artifact_location=location,
                                     tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
    except mlflow.exceptions.MlflowException:
        # another process created it between our lookup and create
        return mlf.get_experiment_by_name(name).experiment_id


def this_process() -> str:
    return process_id(psutil.Process())


def process_id(proc: psutil.Process) -> str:
    # the start time tells a reused pid from the process that opened the run
    return f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.0f}"


def process_alive(identity: str) -> bool:
    """False only when the process is known to be gone: on this host, and its pid dead or reused."""
    host, _, rest = identity.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's run: cannot tell, leave it alone
    try:
        return process_id(psutil.Process(int(pid))) == identity
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but not ours to inspect


def mark_stale_runs(mlf: MlflowClient, experiment_id: str) -> list[str]:
    """Runs left RUNNING by a process that died without ending them (SIGKILL, power loss) end
    KILLED, so the UI never shows a dead run as still going."""
    stale = [run.info.run_id for run in mlf.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                                           max_results=1000)
             if PROCESS_TAG in run.data.tags and not process_alive(run.data.tags[PROCESS_TAG])]
    for run_id in stale:
        mlf.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    return stale


DEVICE_TAG = "layerwise.device"  # where a run computed: 'cpu', 'cuda:0 (NVIDIA H100 80GB HBM3)'


def start_run(mlf: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str],
              parent_run_id: Optional[str] = None) -> str:
    tags = {**tags, PROCESS_TAG: this_process()}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    return mlf.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def start_child_run(mlf: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str], parent_run_id: str,
                    reused_from: Optional[str] = None, link_tag: Optional[str] = None) -> str:
    """A stage's run under the pipeline's parent; a stage reused from an earlier run is named
    '... (reused)', tagged reused and linked (link_tag) to the run that did the work."""
    if reused_from:
        tags = {**tags, REUSED_TAG: "true", link_tag: reused_from}
        run_name += " (reused)"
    return start_run(mlf, experiment_id, run_name, tags, parent_run_id)


def unreachable(exc: BaseException) -> bool:
    """The tracking server did not answer (timeout, refused connection) anywhere in exc's chain:
    MLflow wraps the requests error in an MlflowException raised inside its handler."""
    while exc is not None:
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def run_status(mlf: MlflowClient, run_id: str, finish: bool = True) -> Iterator[None]:
    """Ends the run FAILED on an error, KILLED on an interrupt (Ctrl-C, SIGTERM as KeyboardInterrupt
    or Prefect's TerminationSignal: anything not an Exception), else FINISHED (unless finish is
    False: the run stays open for later work). When the server itself stopped answering, marking
    the run would only wait out the same timeouts again: it is left to the next run's stale-run
    check (the process is gone by then)."""
    try:
        yield
    except Pruned:  # stopped early by a sweep's pruner: not a failure
        mlf.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except Exception as exc:
        if not unreachable(exc):
            mlf.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    except BaseException:
        mlf.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    if finish:
        mlf.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def kill_open_runs(mlf: MlflowClient, experiment_name: str) -> list[str]:
    """Every run of this process still RUNNING in the experiment ends KILLED: the last step of an
    interrupt, for runs a signal caught between their creation and their status context."""
    experiment = mlf.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    mine = f"attributes.status = 'RUNNING' and tags.`{PROCESS_TAG}` = '{this_process()}'"
    runs = [run.info.run_id for run in mlf.search_runs([experiment.experiment_id], mine, max_results=1000)]
    for run_id in runs:
        mlf.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    return runs


def log_params(mlf: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(key, "null" if value is None else str(value)) for key, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_PER_CALL):
        mlf.log_batch(run_id, params=items[start:start + MAX_PARAMS_PER_CALL])


def log_metrics(mlf: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    mlf.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
