"""A tracking store that cannot be used fails the run quickly with one line: a server that answers
its health check but nothing else, a server that stops answering in the middle of a run, and a
database file that can be read but not written."""
import contextlib
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from mlflow.tracking import MlflowClient

from conftest import REPO, mnist_root
from servers import base_env, mlflow_server

pytestmark = pytest.mark.slow

FAIL_WITHIN_S = 60
HANG_S = 120  # a hung request is released after this, so the fake server always stops by itself


class FakeTracking(ThreadingHTTPServer):
    """On loopback: /health answers; every other request is forwarded to `upstream` while
    `answering` is set, and hangs (up to HANG_S) once it is cleared."""
    daemon_threads = True

    def __init__(self, upstream: str | None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.upstream = upstream
        self.answering = threading.Event()
        if upstream:
            self.answering.set()
        self.released = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeTracking

    def log_message(self, *args):
        pass

    def _handle(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/health"):
            return self._reply(200, b"OK", "text/plain")
        if not self.server.answering.is_set():
            self.server.released.wait(HANG_S)  # hang: accept the request, never answer
            return
        upstream = requests.request(self.command, self.server.upstream + self.path, data=body, timeout=60,
                                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        self._reply(upstream.status_code, upstream.content, upstream.headers.get("Content-Type", ""))

    def _reply(self, status: int, body: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@contextlib.contextmanager
def fake_tracking(upstream: str | None = None):
    server = FakeTracking(upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


def layerwise(*args: str, uri: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows", *args, "--data-root", str(mnist_root())], cwd=REPO,
                            env=base_env(MLFLOW_TRACKING_URI=uri), stdout=subprocess.PIPE, stderr=stderr, text=True)


def test_a_server_that_answers_only_its_health_check_fails_the_run_in_a_minute(tracking):
    with fake_tracking() as server:
        started = time.monotonic()
        proc = layerwise("run", "smoke", uri=server.url)
        out, err = proc.communicate(timeout=180)
        seconds = time.monotonic() - started
    print(f"half-dead server: exit {proc.returncode} after {seconds:.1f} s: {err.strip()}")
    assert proc.returncode == 1 and seconds < FAIL_WITHIN_S
    assert len(err.strip().splitlines()) == 1 and "not usable" in err and server.url in err
    assert "Starting temporary server" not in out + err  # refused before the run started


def test_a_server_that_stops_answering_mid_run_fails_the_run_in_a_minute(tracking, tmp_path):
    with mlflow_server(tmp_path / "server") as upstream, fake_tracking(upstream) as server:
        proc = layerwise("run", "smoke", "--set", "layers.1.epochs=100000", uri=server.url,
                         stderr=subprocess.STDOUT)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "[pretrain-2] epoch " in line:
                break
        assert proc.poll() is None, "".join(seen[-30:])
        server.answering.clear()  # from now on every request hangs
        hung = time.monotonic()
        rest, _ = proc.communicate(timeout=180)
        seconds = time.monotonic() - hung
    failed = [line for line in rest.splitlines() if line.startswith("failed: ")]
    print(f"server hung mid-run: exit {proc.returncode} after {seconds:.1f} s: {failed}")
    assert proc.returncode == 1 and seconds < FAIL_WITHIN_S, rest[-3000:]
    assert len(failed) == 1 and server.url in failed[0]


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr (e2fsprogs) to make a file read-only for root")
def test_a_read_only_database_fails_the_store_check_with_one_line(tracking, tmp_path):
    MlflowClient(tracking).search_experiments()  # the database exists, with its tables
    db = tmp_path / "mlruns" / "mlflow.db"
    # the tests run as root, whom file modes do not stop: the immutable flag does
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable flag")
    try:
        started = time.monotonic()
        proc = layerwise("run", "smoke", uri=tracking)
        out, err = proc.communicate(timeout=180)
        seconds = time.monotonic() - started
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    print(f"read-only store: exit {proc.returncode} after {seconds:.1f} s: {err.strip()}")
    assert proc.returncode == 1 and len(err.strip().splitlines()) == 1
    assert "not usable" in err and "readonly" in err
    assert "Starting temporary server" not in out + err
