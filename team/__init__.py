"""Team mode: PostgreSQL, an MLflow tracking server with sign-in and a Prefect server, run from one
folder (.layerwise/team/, or $LAYERWISE_TEAM_DIR) for a team to share.

    python -m team up [--bind ADDR]     # make team-up: start what is not running, say how to use it
    python -m team status               # what runs, where
    python -m team user NAME            # an MLflow account for a teammate, and its env file
    python -m team down                 # make team-down: stop it all by pid, keep the data

Operations only: nothing here imports layerwise, tasks or flows; pipelines and sweeps reach these
servers through the environment the env file exports (docs/operating.md#team-mode).

    layout.py    the folder: paths, ports, generated secrets, the env files
    postgres.py  the PostgreSQL cluster (run as the `postgres` user when started by root)
    services.py  the MLflow and Prefect servers: started detached, stopped by pid
    accounts.py  MLflow's basic-auth users: the admin at first start, teammates, grants
"""
