"""The team folder and what it holds.

Settings (ports, the address the servers listen on, where artifacts go) are kept in team.json,
which holds no secret. The secrets are generated at the first `up` and written only to files of
mode 600: `env`, what a teammate sources (the admin account, the database password, Prefect's
auth string), and `server.env`, what only the servers read (the session key of MLflow's sign-in).
Nothing puts a secret on a command line: the servers get them in their environment."""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shlex
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

DEFAULT_PORTS = {"postgres": 5433, "mlflow": 5001, "prefect": 4201}
ADMIN = "admin"            # MLflow's admin account (basic_auth.ini admin_username)
DB_ROLE = "layerwise"      # the PostgreSQL role that owns the team's databases
PREFECT_USER = "team"      # the user part of Prefect's auth string
DATABASES = ("mlflow", "mlflow_auth", "prefect", "optuna")
LOOPBACK = "127.0.0.1"


class TeamError(RuntimeError):
    """Team mode cannot do what was asked; the message says why and what to do (exit 2)."""


@dataclass
class Settings:
    bind: str = LOOPBACK                  # where every listener binds
    advertise: str = LOOPBACK             # the host name the env file's URLs use
    ports: dict = field(default_factory=lambda: dict(DEFAULT_PORTS))
    artifacts: str = ""                   # --artifacts-destination of the MLflow server ("": the folder)
    s3_endpoint: str = ""                 # MLFLOW_S3_ENDPOINT_URL for an S3-compatible store
    mlflow_workers: int = 2

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.bind)

    def url(self, service: str) -> str:
        base = f"http://{self.advertise}:{self.ports[service]}"
        return f"{base}/api" if service == "prefect" else base

    def storage_url(self) -> str:
        """Optuna's storage: the password comes from PGPASSWORD (libpq), so the URL can be shown."""
        return f"postgresql://{DB_ROLE}@{self.advertise}:{self.ports['postgres']}/optuna"


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def advertised(bind: str) -> str:
    """The name teammates reach a server by: the address itself, or this host's name for a wildcard."""
    return socket.getfqdn() if bind in ("0.0.0.0", "::") else bind


class Team:
    """Paths under the team folder: .layerwise/team/ of the working directory, or $LAYERWISE_TEAM_DIR."""

    def __init__(self, root: Optional[Path] = None):
        self.root = Path(root or os.environ.get("LAYERWISE_TEAM_DIR") or Path.cwd() / ".layerwise" / "team").resolve()
        self.settings_file = self.root / "team.json"
        self.env_file = self.root / "env"
        self.server_env_file = self.root / "server.env"
        self.auth_ini = self.root / "basic_auth.ini"
        self.logs = self.root / "logs"
        self.pg_data = self.root / "postgres"
        self.pg_socket = self.root / "postgres-socket"
        self.prefect_home = self.root / "prefect"
        self.artifacts = self.root / "artifacts"
        self.users = self.root / "users"

    def pidfile(self, service: str) -> Path:
        return self.root / f"{service}.pid"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def load_settings(self) -> Optional[Settings]:
        if not self.settings_file.exists():
            return None
        return Settings(**json.loads(self.settings_file.read_text()))

    def save_settings(self, settings: Settings) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings_file.write_text(json.dumps(asdict(settings), indent=2) + "\n")

    def secrets(self, settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
        """The env file's and server.env's contents: read back, or generated (the first `up`)."""
        if self.env_file.exists() and self.server_env_file.exists():
            return read_env(self.env_file), read_env(self.server_env_file)
        if self.pg_data.exists():
            raise TeamError(f"{self.env_file} (or {self.server_env_file}) is missing but the databases in "
                            f"{self.pg_data} are there: their passwords were in it. Restore the file, or remove "
                            f"{self.root} to start over (its runs and studies go with it)")
        env = team_env(settings, ADMIN, secrets.token_urlsafe(24), secrets.token_urlsafe(24),
                       f"{PREFECT_USER}:{secrets.token_urlsafe(24)}")
        server = {"MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)}
        write_env(self.env_file, env, ENV_HEADER)
        write_env(self.server_env_file, server, "# read by the team's MLflow server only (python -m team up)\n")
        return env, server


ENV_HEADER = """\
# layerwise team mode (python -m team up): `source` this file, then run layerwise as usual.
# It holds credentials: keep it mode 600 and hand it only to whoever may use these servers
# (`python -m team user NAME` writes one with an account of NAME's own).
"""


def team_env(settings: Settings, user: str, password: str, db_password: str, prefect_auth: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": settings.url("mlflow"), "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password, "PREFECT_API_URL": settings.url("prefect"),
            "PREFECT_API_AUTH_STRING": prefect_auth, "LAYERWISE_SWEEP_STORAGE": settings.storage_url(),
            "PGPASSWORD": db_password}


def with_urls(env: dict[str, str], settings: Settings) -> dict[str, str]:
    """The env with its URLs as the settings say now (a later `up` may bind elsewhere)."""
    return {**env, "MLFLOW_TRACKING_URI": settings.url("mlflow"), "PREFECT_API_URL": settings.url("prefect"),
            "LAYERWISE_SWEEP_STORAGE": settings.storage_url()}


def write_env(path: Path, values: dict[str, str], header: str = "") -> None:
    """export lines, created with mode 600 (never readable by others, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(header + "".join(f"export {key}={shlex.quote(value)}\n" for key, value in values.items()))


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            values[key] = value
    return values
