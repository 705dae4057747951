"""The temporary Prefect API a run starts when no server is configured."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path

from prefect.server.api.server import SubprocessASGIServer

from layerwise.locks import file_lock

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Prefect waits 20 s for its temporary API by default; on a machine busy with other runs (an ablation,
# a scheduled run, the test suite) starting it takes longer, and the run would fail before it began.
STARTUP_TIMEOUT_S = 180


def _detach() -> None:
    """Runs in the API's process before exec. Its own session: the Ctrl-C a terminal sends to the
    run's process group must reach the run, which then ends its runs KILLED through this API, not
    the API first. And it dies with the run: a SIGKILLed run cannot stop it, so the kernel does."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the run's atexit hook still stops it
        pass


class DetachedAPIServer(SubprocessASGIServer):
    """Prefect's temporary API server, started in its own session and tied to the run's life.
    Prefect's client finds it as its usual singleton (SubprocessASGIServer() returns this instance)."""

    def _run_uvicorn_command(self) -> subprocess.Popen:
        original = subprocess.Popen

        def popen(*args, **kwargs):
            return original(*args, preexec_fn=_detach, **kwargs)

        subprocess.Popen = popen  # only for the one call below, in this thread, during start-up
        try:
            return super()._run_uvicorn_command()
        finally:
            subprocess.Popen = original


def start_temporary_api() -> None:
    """Without PREFECT_API_URL every run starts a temporary API over the profile's sqlite database.
    Two processes starting one at once on a fresh database both migrate it and one fails ('table
    artifact has no column named ...'), so the start is taken one process at a time."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    with file_lock(Path(PREFECT_HOME.value()) / "layerwise-api-start.lock"):
        DetachedAPIServer().start(timeout=STARTUP_TIMEOUT_S)
