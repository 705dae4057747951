"""The MLflow tracking server (sign-in by MLflow's basic-auth app, artifacts proxied to the store
the settings name) and the Prefect server, both on the team's PostgreSQL. Each is started in a
session of its own, its pid (and start time: a reused pid is not it) kept in team/NAME.pid, and
stopped by signalling that process group. Secrets reach them through the environment only."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Optional

import psutil
import requests

from team.layout import ADMIN, DB_ROLE, LOOPBACK, Settings, Team, TeamError

PYTHON = sys.executable  # the servers run from this environment (`python -m mlflow`, `python -m prefect`)
SERVICES = ("mlflow", "prefect")
START_TIMEOUT_S = 600  # a fresh database is migrated first (Prefect's: minutes on a machine busy with training)


def running(team: Team, service: str) -> Optional[psutil.Process]:
    path = team.pidfile(service)
    if not path.exists():
        return None
    pid, started = path.read_text().split()
    try:
        proc = psutil.Process(int(pid))
        return proc if f"{proc.create_time():.2f}" == started else None
    except psutil.NoSuchProcess:
        return None


def _db_url(settings: Settings, database: str, driver: str = "postgresql") -> str:
    # the servers run beside the database: loopback, whatever address it listens on besides
    return f"{driver}://{DB_ROLE}@127.0.0.1:{settings.ports['postgres']}/{database}"


def write_auth_ini(team: Team, settings: Settings) -> None:
    """MLflow's sign-in: accounts in PostgreSQL, everyone may read, only an experiment's creator
    (and whoever it grants) may write. Credential checks are cached a minute per worker: without
    it every request hashes the password again (a CPU-bound scrypt check), which is what 8 cells
    logging at once would wait on."""
    team.auth_ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {_db_url(settings, 'mlflow_auth')}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        "auth_cache_ttl_seconds = 60\n")


def _mlflow_command(team: Team, settings: Settings) -> list[str]:
    destination = settings.artifacts or str(team.artifacts)
    command = [PYTHON, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", settings.bind,
               "--port", str(settings.ports["mlflow"]), "--backend-store-uri", _db_url(settings, "mlflow"),
               "--artifacts-destination", destination, "--workers", str(settings.mlflow_workers),
               # uvicorn restarts a worker that has not answered its health check in 5 s; one still
               # importing MLflow on a machine busy with training takes longer, and it would restart forever
               "--uvicorn-opts", "--timeout-worker-healthcheck 120"]
    if settings.exposed:  # MLflow answers only requests addressed to a name it knows (DNS rebinding)
        names = {settings.advertise, settings.bind, "localhost", "127.0.0.1"}
        command += ["--allowed-hosts", ",".join(sorted(names | {f"{name}:*" for name in names}))]
    return command


def _prefect_command(settings: Settings) -> list[str]:
    return [PYTHON, "-m", "prefect", "server", "start", "--host", settings.bind,
            "--port", str(settings.ports["prefect"]), "--analytics-off"]


def _env(team: Team, settings: Settings, env: dict, server_env: dict, service: str) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("MLFLOW_TRACKING_", "PREFECT_API_", "LAYERWISE_"))}
    base.update(PGPASSWORD=env["PGPASSWORD"], PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true",
                DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if service == "mlflow":
        # no GenAI job runners (seven huey processes): nothing of layerwise submits jobs
        base.update(MLFLOW_AUTH_CONFIG_PATH=str(team.auth_ini), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
                    **server_env)
        if settings.s3_endpoint:
            base["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint
    else:
        base.update(PREFECT_HOME=str(team.prefect_home),
                    PREFECT_SERVER_DATABASE_CONNECTION_URL=_db_url(settings, "prefect", "postgresql+asyncpg"),
                    PREFECT_SERVER_API_AUTH_STRING=env["PREFECT_API_AUTH_STRING"],
                    PREFECT_UI_API_URL=settings.url("prefect"),
                    # the server's own client calls go to itself (unset, Prefect starts a temporary API beside it)
                    PREFECT_API_URL=f"{local_base(settings, 'prefect')}/api",
                    PREFECT_API_AUTH_STRING=env["PREFECT_API_AUTH_STRING"])
    return base


def start(team: Team, settings: Settings, env: dict, server_env: dict, service: str) -> psutil.Process:
    """Starts SERVICE detached (its own session, output to team/logs/SERVICE.log) and waits until it answers."""
    command = _mlflow_command(team, settings) if service == "mlflow" else _prefect_command(settings)
    team.logs.mkdir(parents=True, exist_ok=True)
    with open(team.log(service), "a") as log:
        proc = subprocess.Popen(command, cwd=team.root, env=_env(team, settings, env, server_env, service),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process = psutil.Process(proc.pid)
    team.pidfile(service).write_text(f"{proc.pid} {process.create_time():.2f}\n")
    _wait_healthy(team, settings, service, proc, env)
    return process


def local_base(settings: Settings, service: str) -> str:
    """The service's address from this machine: its bind address (loopback for a wildcard)."""
    host = LOOPBACK if settings.bind in ("0.0.0.0", "::") else settings.bind
    return f"http://{host}:{settings.ports[service]}"


def health_url(settings: Settings, service: str) -> str:
    return local_base(settings, service) + ("/health" if service == "mlflow" else "/api/health")


def _wait_healthy(team: Team, settings: Settings, service: str, proc: subprocess.Popen, env: dict) -> None:
    url = health_url(settings, service)
    auth = tuple(env["PREFECT_API_AUTH_STRING"].split(":", 1)) if service == "prefect" else None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TeamError(f"the {service} server exited ({proc.returncode}) while starting: see {team.log(service)}")
        try:
            if requests.get(url, auth=auth, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    stop(team, service)
    raise TeamError(f"the {service} server did not answer {url} within {START_TIMEOUT_S} s: see {team.log(service)}")


def stop(team: Team, service: str, timeout: float = 60) -> Optional[int]:
    """SIGTERM to the service's process group (its workers too), SIGKILL to whatever is left after timeout."""
    process = running(team, service)
    team.pidfile(service).unlink(missing_ok=True)
    if process is None:
        return None
    group = [process, *process.children(recursive=True)]  # a child may have a session of its own
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for child in group[1:]:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(group, timeout=timeout)
    for leftover in alive:
        leftover.kill()
    psutil.wait_procs(alive, timeout=10)
    return process.pid
