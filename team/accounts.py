"""MLflow's sign-in accounts. The admin is created here, in this process, before the server
first starts (its password is the env file's, generated at the first `up`), so the password
never travels on a command line or in a server's environment. Teammates' accounts and grants go
through the server's REST API with the admin's credentials, as MLflow's AuthServiceClient does."""
from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from team.layout import ADMIN, Settings, Team, TeamError, read_env, with_urls, write_env

USER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")


def bootstrap_admin(settings: Settings, env: dict) -> bool:
    """The admin account in the sign-in database (created with its tables on first use). True when created."""
    import warnings

    warnings.filterwarnings("ignore", message=".*starlette.middleware.wsgi is deprecated")  # MLflow's, not ours
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    from team.services import _db_url

    store = SqlAlchemyStore()
    with _environ(PGPASSWORD=env["PGPASSWORD"]):
        store.init_db(_db_url(settings, "mlflow_auth"))
        if store.has_user(ADMIN, use_primary=True):
            return False
        store.create_user(ADMIN, env["MLFLOW_TRACKING_PASSWORD"], is_admin=True)
    store.engine.dispose()
    return True


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _as_admin(team: Team) -> Iterator:
    from mlflow.server.auth.client import AuthServiceClient

    env = read_env(team.env_file)
    with _environ(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=env["MLFLOW_TRACKING_PASSWORD"]):
        yield AuthServiceClient(env["MLFLOW_TRACKING_URI"])


def add_user(team: Team, settings: Settings, name: str) -> Path:
    """A teammate's account (a generated password) and env file team/users/NAME.env: the team's
    env with NAME's credentials in place of the admin's. NAME reads every experiment and writes
    the ones NAME creates, and those others grant (grant())."""
    if not USER_NAME.match(name) or name == ADMIN:
        raise TeamError(f"user name {name!r}: use 1-64 of A-Z a-z 0-9 . _ - (and not {ADMIN!r})")
    path = team.users / f"{name}.env"
    if path.exists():
        raise TeamError(f"{path} exists: {name} has an account already")
    password = secrets.token_urlsafe(18)
    with _as_admin(team) as auth:
        auth.create_user(name, password)
    env = with_urls(read_env(team.env_file), settings)
    write_env(path, {**env, "MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password},
              f"# layerwise team mode, signed in as {name}: `source` this file (mode 600: it holds credentials)\n")
    return path


def grant(team: Team, name: str, experiment: str, permission: str) -> str:
    """Gives NAME a permission on an experiment (by name): EDIT lets a teammate run that pipeline too."""
    from mlflow.tracking import MlflowClient

    if permission not in PERMISSIONS:
        raise TeamError(f"permission {permission!r}: one of {', '.join(PERMISSIONS)}")
    with _as_admin(team) as auth:
        found = MlflowClient(auth.tracking_uri).get_experiment_by_name(experiment)
        if found is None:
            raise TeamError(f"no experiment named {experiment!r} on {auth.tracking_uri}")
        auth.grant_user_permission(name, "experiment", found.experiment_id, permission)
    return found.experiment_id
