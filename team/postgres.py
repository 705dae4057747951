"""The team's PostgreSQL cluster: its own data directory (team/postgres) and port, one role
(`layerwise`, password-protected, no superuser) owning the databases of MLflow, its sign-in,
Prefect and Optuna. PostgreSQL refuses to run as root: started by root, it runs as the
`postgres` user. Its superuser `postgres` is reached only through a socket in a folder of mode
700 (team/postgres-socket); over TCP only the `layerwise` role signs in, with its password."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from team.layout import DATABASES, DB_ROLE, Settings, Team, TeamError

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = ("install PostgreSQL's server: Debian/Ubuntu `apt-get install postgresql`, Fedora `dnf install "
                "postgresql-server`, macOS `brew install postgresql@15`")
DEBIAN_PROGRAMS = Path("/usr/lib/postgresql")  # Debian's VERSION/bin folders, off PATH
OS_USER = "postgres"  # who runs the server when root starts it
SOCKET_PATH_MAX = 107  # sun_path


def programs() -> Path:
    """The folder holding initdb, pg_ctl and postgres (Debian keeps them off PATH)."""
    found = shutil.which("pg_ctl")
    folders = ([Path(found).resolve().parent] if found else []) + sorted(DEBIAN_PROGRAMS.glob("*/bin"), reverse=True)
    for folder in folders:
        if all((folder / name).exists() for name in SERVER_PROGRAMS):
            return folder
    raise TeamError(f"PostgreSQL's server programs ({', '.join(SERVER_PROGRAMS)}) are not on this machine: {INSTALL_HINT}")


def _owner() -> dict:
    """subprocess arguments that run a command as the cluster's owner: `postgres` for root, else you."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise TeamError(f"PostgreSQL refuses to run as root and this machine has no `{OS_USER}` user: create one "
                        f"(`useradd --system {OS_USER}`), or run team mode as another user") from None
    return {"user": OS_USER, "group": OS_USER}


def _chown(path: Path) -> None:
    owner = _owner()
    if owner:
        shutil.chown(path, owner["user"], owner["group"])


def _run(team: Team, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(programs() / args[0]), *args[1:]], capture_output=True, text=True, cwd=team.root,
                          start_new_session=True, **_owner())
    if check and done.returncode != 0:
        raise TeamError(f"{args[0]} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}"
                        f"; the server's log: {team.log('postgres')}")
    return done


def prepare(team: Team) -> None:
    """The data and socket folders (mode 700, the owner's) and the log, and a check that the owner
    can reach them (every folder above must be searchable by it)."""
    socket_file = team.pg_socket / ".s.PGSQL.65535"
    if len(str(socket_file)) > SOCKET_PATH_MAX:
        raise TeamError(f"{team.root} is too deep for PostgreSQL's socket ({len(str(socket_file))} characters, at most "
                        f"{SOCKET_PATH_MAX}): set LAYERWISE_TEAM_DIR to a shorter folder")
    team.logs.mkdir(parents=True, exist_ok=True)
    for folder in (team.pg_data, team.pg_socket):
        folder.mkdir(mode=0o700, exist_ok=True)
        _chown(folder)
    team.log("postgres").touch()
    _chown(team.log("postgres"))
    if _owner() and subprocess.run(["test", "-w", str(team.pg_data)], **_owner()).returncode != 0:
        raise TeamError(f"the `{OS_USER}` user, which PostgreSQL runs as, cannot reach {team.pg_data}: a folder above "
                        f"it is not searchable by others (chmod o+x it), or set LAYERWISE_TEAM_DIR to a folder it can reach")


def initialised(team: Team) -> bool:
    return (team.pg_data / "PG_VERSION").exists()


def init(team: Team) -> None:
    _run(team, "initdb", "-D", str(team.pg_data), "-U", "postgres", "--auth-local=trust",
         "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions")
    conf = team.pg_data / "postgresql.conf"
    conf.write_text(conf.read_text() + "\ninclude_if_exists = 'layerwise.conf'   # written by python -m team up\n")


def configure(team: Team, settings: Settings) -> None:
    """Where it listens and who may sign in, rewritten at every start (a later `up --bind` moves it)."""
    listen = "*" if settings.bind in ("0.0.0.0", "::") else settings.bind
    (team.pg_data / "layerwise.conf").write_text(
        f"port = {settings.ports['postgres']}\nlisten_addresses = '{listen}'\n"
        f"unix_socket_directories = '{team.pg_socket}'\nunix_socket_permissions = 0700\n"
        "max_connections = 200\npassword_encryption = scram-sha-256\n")
    hosts = ["127.0.0.1/32", "::1/128"] + (["0.0.0.0/0", "::/0"] if settings.exposed else [])
    (team.pg_data / "pg_hba.conf").write_text(
        "# written by python -m team up: the superuser only through the socket (a folder of mode 700),\n"
        f"# the `{DB_ROLE}` role over TCP with its password\nlocal all postgres trust\n"
        + "".join(f"host all {DB_ROLE} {net} scram-sha-256\n" for net in hosts))
    for name in ("layerwise.conf", "pg_hba.conf", "postgresql.conf"):
        _chown(team.pg_data / name)


def pid(team: Team) -> Optional[int]:
    """The running server's pid (postmaster.pid), None when it is not running."""
    if not (team.pg_data / "postmaster.pid").exists():
        return None
    done = _run(team, "pg_ctl", "status", "-D", str(team.pg_data), check=False)
    if done.returncode != 0:
        return None
    return int((team.pg_data / "postmaster.pid").read_text().split()[0])


def start(team: Team) -> int:
    _run(team, "pg_ctl", "start", "-D", str(team.pg_data), "-l", str(team.log("postgres")), "-w", "-t", "120")
    return pid(team)


def stop(team: Team) -> Optional[int]:
    running = pid(team)
    if running:
        _run(team, "pg_ctl", "stop", "-D", str(team.pg_data), "-m", "fast", "-w", "-t", "120")
    return running


def ensure_databases(team: Team, settings: Settings, password: str) -> None:
    """The role (its password set to the env file's, stored as a SCRAM verifier: the password
    itself never reaches the server or its log) and the databases it owns."""
    import psycopg
    from psycopg import sql

    def connect(database: str):
        return psycopg.connect(host=str(team.pg_socket), port=settings.ports["postgres"], user="postgres",
                               dbname=database, autocommit=True)

    with connect("postgres") as con:
        verifier = con.pgconn.encrypt_password(password.encode(), DB_ROLE.encode(), b"scram-sha-256").decode()
        cur = con.cursor()
        verb = "ALTER" if cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_ROLE,)).fetchone() else "CREATE"
        # DDL takes no bound parameters: the verifier is quoted by the driver as a literal
        cur.execute(sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(DB_ROLE), sql.Literal(verifier)))
        for database in DATABASES:
            if not cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(DB_ROLE)))
    with connect("prefect") as con:  # Prefect's migrations want pg_trgm, which only a superuser may create
        con.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
