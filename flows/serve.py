"""`layerwise serve`: every pipeline of pipelines.yaml as a deployment of the `layerwise` flow,
served from one process. Pipelines with `schedule:` run on their cron; every deployment can also be
run on demand (`prefect deployment run 'layerwise/NAME'` or the UI)."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
from prefect import get_client, serve
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.pipeline import layerwise_pipeline
from layerwise.config import PipelineConfig

FLOW_NAME = "layerwise"
SERVER_HINT = ("start one with `make server` and point the CLI at it: "
               "export PREFECT_API_URL=http://127.0.0.1:4200/api")


class ServeError(RuntimeError):
    """serve cannot start (no Prefect server); the message says what to do."""


def api_url() -> str:
    """Schedules live in a real Prefect server: the temporary one of a plain run dies with it."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ServeError(f"layerwise serve needs a Prefect server for its schedules; {SERVER_HINT}")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise ServeError(f"the Prefect server at {url} is not reachable ({type(exc).__name__}); "
                         f"{SERVER_HINT}") from None
    return url


def deployment_for(name: str, cfg: PipelineConfig, config_path: Path) -> RunnerDeployment:
    schedule = cfg.schedule
    return layerwise_pipeline.to_deployment(
        name=name,
        description=cfg.description or None,
        # an empty list (not None) clears a schedule removed from the file since the last serve
        schedules=[Cron(schedule.cron, timezone=schedule.timezone)] if schedule else [],
        parameters={"pipeline": name, "overrides": schedule.overrides() if schedule else [],
                    "config_path": str(config_path)},
        concurrency_limit=schedule.concurrency_limit if schedule else 1,
        paused=False,  # serve stopping pauses them; serving again resumes them
        tags=["layerwise"],
    )


def remove_stale(names: set[str], config_path: Path) -> list[str]:
    """Deployments this file served before but no longer defines (a removed pipeline)."""
    removed = []
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))):
            same_file = deployment.parameters.get("config_path") == str(config_path)
            if same_file and deployment.name not in names:
                client.delete_deployment(deployment.id)
                removed.append(deployment.name)
    return removed


def serve_pipelines(pipelines: dict[str, PipelineConfig], config_path: str | os.PathLike) -> None:
    """Blocks until stopped (Ctrl-C / SIGTERM); every way out pauses the schedules."""
    url = api_url()
    path = Path(config_path).resolve()
    removed = remove_stale(set(pipelines), path)
    if removed:
        print(f"removed deployments no longer in {path.name}: {', '.join(sorted(removed))}", flush=True)
    deployments = [deployment_for(name, cfg, path) for name, cfg in pipelines.items()]
    for name, cfg in pipelines.items():
        when = (f"cron '{cfg.schedule.cron}' ({cfg.schedule.timezone}), at most "
                f"{cfg.schedule.concurrency_limit} at once" if cfg.schedule else "on demand only")
        print(f"  {FLOW_NAME}/{name}: {when}", flush=True)
    print(f"serving {len(deployments)} deployment(s) against {url}", flush=True)
    try:
        serve(*deployments, print_starting_message=False, pause_on_shutdown=False)
    finally:
        # paused here rather than by the runner's shutdown, which a stop during its start-up skips
        pause(list(pipelines))


def pause(names: list[str]) -> None:
    with get_client(sync_client=True) as client:
        for name in names:
            client.pause_deployment(client.read_deployment_by_name(f"{FLOW_NAME}/{name}").id)
