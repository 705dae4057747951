"""The temporary Prefect API a run starts when no server is configured."""
from __future__ import annotations

from pathlib import Path

from layerwise.locks import file_lock


def start_temporary_api() -> None:
    """Without PREFECT_API_URL every run starts a temporary API over the profile's sqlite database.
    Two processes starting one at once on a fresh database both migrate it and one fails ('table
    artifact has no column named ...'), so the start is taken one process at a time."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    with file_lock(Path(PREFECT_HOME.value()) / "layerwise-api-start.lock"):
        SubprocessASGIServer().start()
