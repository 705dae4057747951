"""Real servers for the operating tests: started on a free loopback port, stopped afterwards."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import httpx

from conftest import REPO, mnist_root

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MNIST_ROOT": str(mnist_root())}
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def default_sigint() -> None:
    """Runs in each child before exec: Ctrl-C's default disposition, as in a terminal. A suite
    launched as a background job without job control (`cmd &` in a script) ignores SIGINT, and
    children inherit that, so the Ctrl-C tests would otherwise send a signal nobody hears."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Process:
    """A child process whose output goes to a log file (read back when a test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=default_sigint)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {text!r}:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output()[-4000:]}"
            time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def wait_healthy(url: str, proc: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.proc.poll() is None, f"server exited {proc.proc.returncode}:\n{proc.output()[-4000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not healthy within {timeout} s:\n{proc.output()[-4000:]}"
        time.sleep(0.5)


@contextlib.contextmanager
def serving(proc: Process, url: str, health: str) -> Iterator[str]:
    try:
        wait_healthy(health, proc, timeout=120)
        yield url
    finally:
        proc.stop(signal.SIGINT)


def prefect_server(home: Path):
    """`prefect server start` with its own database; yields the API URL."""
    port = free_port()
    proc = Process([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                    "--no-ui", "--analytics-off"], base_env(PREFECT_HOME=str(home)), home.parent / "prefect-server.log")
    api = f"http://127.0.0.1:{port}/api"
    return serving(proc, api, f"{api}/health")


def mlflow_server(root: Path):
    """`mlflow server` over a sqlite store with artifacts beside it (as `make mlflow-server`)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    proc = Process([str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                    "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                    "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                   base_env(), root.parent / "mlflow-server.log")
    url = f"http://127.0.0.1:{port}"
    return serving(proc, url, f"{url}/health")


def run_until(args: list[str], text: str, timeout: float = 240) -> tuple[subprocess.Popen, list[str]]:
    """`python -m flows ARGS` in its own process group, read until a line holds text."""
    proc = subprocess.Popen([sys.executable, "-m", "flows", *args], cwd=REPO, env=base_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=default_sigint)
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if text in line or time.monotonic() > deadline:
            break
    if not any(text in line for line in seen):
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"no {text!r} within {timeout} s:\n{''.join(seen[-30:])}")
    return proc, seen
