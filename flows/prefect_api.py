"""The temporary Prefect API a run starts when no server is configured.

`layerwise run` launches it first thing (launch_temporary_api) and waits for it only just before
the flow (TemporaryAPI.ready): its ~3 s start overlaps the checks and the imports instead of
following them, and this process never imports Prefect's server (FastAPI and the server's models,
~1.5 s). The command is the one Prefect's own SubprocessASGIServer runs."""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

from layerwise.store.locks import file_lock

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Prefect waits 20 s for its temporary API by default; on a machine busy with other runs (an ablation,
# a scheduled run, the test suite) starting it takes longer, and the run would fail before it began.
STARTUP_TIMEOUT_S = 180
START_LOCK = "layerwise-api-start.lock"


def _detach() -> None:
    """Runs in the API's process before exec. Its own session: the Ctrl-C a terminal sends to the
    run's process group must reach the run, which then ends its runs KILLED through this API, not
    the API first. And it dies with the run: a SIGKILLed run cannot stop it, so the kernel does."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the run's atexit hook still stops it
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TemporaryAPI:
    """One uvicorn process serving Prefect's API over the profile's database, for this run only."""

    def __init__(self, lock_handle) -> None:
        import prefect
        from prefect.settings import get_current_settings

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self._lock = lock_handle  # held until the API answers: it migrates a fresh database
        self._used = False  # the run talked to it (ready() returned)
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"], env=env, preexec_fn=_detach)
        atexit.register(self.stop)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    def ready(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        """Waits until the API answers /health; returns its URL."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the temporary Prefect API exited with code {self.process.returncode} "
                                       "before it answered (its error is printed above)")
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                        if reply.status == 200:
                            self._used = True
                            return self.url
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError(f"the temporary Prefect API did not answer within {timeout:.0f} s "
                               "(set PREFECT_API_URL to a running server: make server)")
        finally:
            self._release_lock()

    def stop(self) -> None:
        """Ends the API: SIGTERM, so it shuts down cleanly; one the run never used (stopped by bad
        input or a Ctrl-C before the flow began) goes at once with SIGKILL: it holds nothing of the
        run's, and SIGTERM during its start runs Prefect's shutdown of services that have not
        started yet, which prints a traceback ('Reactive triggers not started', Prefect 3.9: seen
        in benchmarks/interrupt_loop.py) and may take the 5 s this waits."""
        self._release_lock()
        if self.process.poll() is None and not self._used:
            self.process.kill()
            self.process.wait()
        elif self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch_temporary_api() -> Optional[TemporaryAPI]:
    """Starts the API without waiting for it, where a run needs one: no PREFECT_API_URL, temporary
    servers allowed, and no other process starting one right now (two processes starting one at once
    on a fresh database both migrate it and one fails: 'table artifact has no column named ...').
    None means: leave it to Prefect, which starts its own (one process at a time: temporary_api)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    lock_path = Path(PREFECT_HOME.value()) / START_LOCK
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    try:
        return TemporaryAPI(handle)
    except BaseException:
        handle.close()
        raise


@contextlib.contextmanager
def temporary_api(launched: Optional[TemporaryAPI]) -> Iterator[None]:
    """The flow's Prefect API for the block: the launched one once it answers, else Prefect's own
    temporary server (started here, one process at a time, in its own session), else the configured
    PREFECT_API_URL."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, PREFECT_UI_URL,
                                  temporary_settings)

    if launched is None:
        if not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            _start_prefect_server()
        yield
        return
    url = launched.ready()
    os.environ["PREFECT_API_URL"] = url  # processes the run starts (Dask workers) find it too
    try:
        # no UI is served: the log's "View at <url>" link would lead nowhere, as with Prefect's own
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_UI_URL: ""}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def _start_prefect_server() -> None:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_HOME

    class DetachedAPIServer(SubprocessASGIServer):
        """Prefect's temporary API server, in its own session and tied to the run's life. Prefect's
        client finds it as its usual singleton (SubprocessASGIServer() returns this instance)."""

        def _run_uvicorn_command(self) -> subprocess.Popen:
            original = subprocess.Popen

            def popen(*args, **kwargs):
                return original(*args, preexec_fn=_detach, **kwargs)

            subprocess.Popen = popen  # only for the one call below, in this thread, during start-up
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = original

    with file_lock(Path(PREFECT_HOME.value()) / START_LOCK):
        DetachedAPIServer().start(timeout=STARTUP_TIMEOUT_S)
