"""python -m team up | down | status | user NAME | grant NAME EXPERIMENT PERMISSION (make team-up, team-down)."""
from __future__ import annotations

import argparse
import sys

from team import accounts, postgres, services
from team.layout import (DEFAULT_PORTS, ENV_HEADER, LOOPBACK, Settings, Team, TeamError, advertised, with_urls,
                         write_env)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m team", description="Team mode: PostgreSQL, MLflow with sign-in "
                                     "and Prefect for a team, under .layerwise/team/ (or $LAYERWISE_TEAM_DIR).")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start what is not running (the first time: create it all) and say how to use it")
    up.add_argument("--bind", metavar="ADDR", help=f"the address every listener binds (default {LOOPBACK}: this "
                    "machine only). Any other address EXPOSES PostgreSQL (the team's databases, password-protected), "
                    "the MLflow server (sign-in required) and the Prefect server (auth string required) to every host "
                    "that reaches ADDR, over unencrypted connections")
    up.add_argument("--advertise", metavar="HOST", help="the host name teammates use in the env file's URLs (default: "
                    "ADDR, or this machine's name for 0.0.0.0)")
    for service, port in DEFAULT_PORTS.items():
        up.add_argument(f"--{service}-port", type=int, metavar="PORT", help=f"default {port}")
    up.add_argument("--artifacts", metavar="DEST", help="where the MLflow server keeps artifacts: a folder (default "
                    "team/artifacts) or s3://BUCKET/PREFIX (AWS credentials as boto3 finds them)")
    up.add_argument("--s3-endpoint", metavar="URL", help="an S3-compatible store's endpoint (MinIO, moto)")
    up.add_argument("--mlflow-workers", type=int, metavar="N", help="the MLflow server's worker processes (default 2)")
    sub.add_parser("down", help="stop the servers and PostgreSQL, by pid; the data stays")
    sub.add_parser("check", help="is PostgreSQL's server here? (one line; exit 2 when not)")
    sub.add_parser("status", help="what runs, where")
    user = sub.add_parser("user", help="an MLflow account for a teammate, and team/users/NAME.env for them to source")
    user.add_argument("name")
    grant = sub.add_parser("grant", help="give a teammate a permission on an experiment (EDIT: may run that pipeline)")
    grant.add_argument("name")
    grant.add_argument("experiment")
    grant.add_argument("permission", choices=accounts.PERMISSIONS)
    return parser


def _settings(team: Team, args) -> Settings:
    """team.json's settings with the flags given applied; changing them needs everything stopped."""
    settings = team.load_settings() or Settings()
    wanted = {"bind": args.bind, "artifacts": args.artifacts, "s3_endpoint": args.s3_endpoint,
              "mlflow_workers": args.mlflow_workers}
    changed = {key: value for key, value in wanted.items() if value is not None and getattr(settings, key) != value}
    ports = {service: getattr(args, f"{service}_port") for service in DEFAULT_PORTS}
    changed.update({f"{s}_port": p for s, p in ports.items() if p is not None and settings.ports[s] != p})
    advertise = args.advertise or (advertised(args.bind) if args.bind else None)
    if advertise and advertise != settings.advertise:
        changed["advertise"] = advertise
    if changed and team.settings_file.exists() and _anything_running(team):
        raise TeamError(f"the team's servers run with {team.settings_file}'s settings; to change "
                        f"{', '.join(sorted(changed))}, stop them first (make team-down)")
    for key, value in changed.items():
        if key.endswith("_port"):
            settings.ports[key[:-len("_port")]] = value
        else:
            setattr(settings, key, value)
    return settings


def _anything_running(team: Team) -> bool:
    return bool(postgres.initialised(team) and postgres.pid(team)) or any(
        services.running(team, s) for s in services.SERVICES)


def cmd_up(args) -> int:
    team = Team()
    postgres.programs()  # no PostgreSQL: one line naming the package, before anything is written
    settings = _settings(team, args)
    if settings.exposed:
        print(f"team: listening on {settings.bind}, which EXPOSES to every host that reaches it: PostgreSQL on port "
              f"{settings.ports['postgres']} (the MLflow, Prefect and Optuna databases; the `layerwise` role's "
              f"password), MLflow on {settings.ports['mlflow']} (sign-in required) and Prefect on "
              f"{settings.ports['prefect']} (auth string required), all unencrypted: use a network you trust",
              flush=True)
    team.root.mkdir(parents=True, exist_ok=True)
    env, server_env = team.secrets(settings)
    env = with_urls(env, settings)
    write_env(team.env_file, env, ENV_HEADER)
    team.save_settings(settings)

    already, started = [], []
    postgres.prepare(team)
    pid = postgres.pid(team) if postgres.initialised(team) else None
    if pid:
        already.append(f"postgres (pid {pid})")
    else:
        if not postgres.initialised(team):
            print(f"team: creating the PostgreSQL cluster in {team.pg_data}", flush=True)
            postgres.init(team)
        postgres.configure(team, settings)
        pid = postgres.start(team)
        started.append(f"postgres (pid {pid})")
    postgres.ensure_databases(team, settings, env["PGPASSWORD"])
    if accounts.bootstrap_admin(settings, env):
        print(f"team: created the MLflow admin account `{accounts.ADMIN}` (its password is in {team.env_file})", flush=True)
    services.write_auth_ini(team, settings)
    for service in services.SERVICES:
        process = services.running(team, service)
        if process:
            already.append(f"{service} (pid {process.pid})")
            continue
        print(f"team: starting the {service} server (log: {team.log(service)})", flush=True)
        process = services.start(team, settings, env, server_env, service)
        started.append(f"{service} (pid {process.pid})")
    if already:
        print("team: already running: " + ", ".join(already))
    if started:
        print("team: started: " + ", ".join(started))
    print(_usage(team, settings))
    return EXIT_OK


def _usage(team: Team, settings: Settings) -> str:
    artifacts = settings.artifacts or team.artifacts
    return (f"\n  PostgreSQL  {settings.advertise}:{settings.ports['postgres']}   databases mlflow, mlflow_auth, prefect, "
            f"optuna (data: {team.pg_data})\n"
            f"  MLflow      {settings.url('mlflow')}   sign-in required; artifacts through the server to {artifacts}\n"
            f"  Prefect     {settings.url('prefect')}   UI {settings.url('prefect')[:-4]}\n\n"
            f"Use it (this shell, or another host with a copy of the file):\n"
            f"  source {team.env_file}\n"
            f"  layerwise run NAME | layerwise sweep NAME | layerwise serve     # unchanged\n"
            f"The MLflow UI asks for a user: `admin` and the MLFLOW_TRACKING_PASSWORD in {team.env_file}.\n"
            f"A teammate's own account: python -m team user NAME.  Stop it all: make team-down (the data stays).")


def cmd_down(args) -> int:
    team = Team()
    stopped = []
    for service in reversed(services.SERVICES):
        pid = services.stop(team, service)
        if pid:
            stopped.append(f"{service} (pid {pid})")
    if postgres.initialised(team):
        pid = postgres.stop(team)
        if pid:
            stopped.append(f"postgres (pid {pid})")
    print(("team: stopped " + ", ".join(stopped)) if stopped else "team: nothing was running",
          end=f"; the data stays in {team.root}\n" if team.root.exists() else "\n")
    return EXIT_OK


def cmd_status(args) -> int:
    team = Team()
    settings = team.load_settings()
    if settings is None:
        print(f"team: not set up in {team.root} (make team-up)")
        return EXIT_OK
    pid = postgres.pid(team) if postgres.initialised(team) else None
    lines = [f"postgres  {'pid ' + str(pid) if pid else 'stopped'}  {settings.advertise}:{settings.ports['postgres']}"]
    for service in services.SERVICES:
        process = services.running(team, service)
        lines.append(f"{service:<9} {'pid ' + str(process.pid) if process else 'stopped'}  {settings.url(service)}")
    print("\n".join(lines))
    return EXIT_OK


def cmd_check(args) -> int:
    print(f"team: PostgreSQL's server programs are in {postgres.programs()}")
    return EXIT_OK


def cmd_user(args) -> int:
    team = Team()
    settings = team.load_settings()
    if settings is None or not services.running(team, "mlflow"):
        raise TeamError("the team's MLflow server is not running: make team-up first")
    path = accounts.add_user(team, settings, args.name)
    print(f"team: created the MLflow account `{args.name}`; its env file is {path} (mode 600): hand it to "
          f"{args.name}, who runs `source {path.name}`. {args.name} reads every experiment and writes the ones "
          f"{args.name} creates; python -m team grant {args.name} EXPERIMENT EDIT lets {args.name} run that pipeline too.")
    return EXIT_OK


def cmd_grant(args) -> int:
    team = Team()
    if not services.running(team, "mlflow"):
        raise TeamError("the team's MLflow server is not running: make team-up first")
    experiment_id = accounts.grant(team, args.name, args.experiment, args.permission)
    print(f"team: {args.name} has {args.permission} on experiment {args.experiment!r} ({experiment_id})")
    return EXIT_OK


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    commands = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "user": cmd_user, "grant": cmd_grant,
                "check": cmd_check}
    try:
        return commands[args.command](args)
    except TeamError as exc:
        print(f"team: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
