"""make test-team's fixture: one team, brought up for real for the whole module (`python -m team up` on free
loopback ports in a fresh folder, artifacts proxied to moto's S3 server) and taken down by the
last test. Every process the tests start goes through here, so the secrets can be looked for in
their command lines and their output."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from conftest import REPO
from servers import Process, base_env, free_port, wait_healthy

BUCKET = "layerwise-team"
AWS = {"AWS_ACCESS_KEY_ID": "moto-test", "AWS_SECRET_ACCESS_KEY": "moto-test", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class TeamUnderTest:
    root: Path                       # LAYERWISE_TEAM_DIR
    logs: Path                       # every test process's output
    ports: dict
    s3_endpoint: str
    up_output: str = ""
    command_lines: set = field(default_factory=set)   # seen while the tests ran (looked at for secrets)

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    def env(self, user_file: Path | None = None, **extra: str) -> dict[str, str]:
        """What a teammate's shell has after `source ENV_FILE`, for a test process."""
        from team.layout import read_env

        return base_env(**read_env(user_file or self.env_file), **AWS, LAYERWISE_TEAM_DIR=str(self.root),
                        LAYERWISE_WORKDIR=str(self.root.parent / "work"), PYTHONPATH=str(REPO),
                        MLFLOW_DISABLE_TELEMETRY="true", **extra)

    def team(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        env = base_env(**AWS, LAYERWISE_TEAM_DIR=str(self.root), PYTHONPATH=str(REPO))
        return subprocess.run([sys.executable, "-m", "team", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)

    def process(self, name: str, args: list[str], env: dict) -> Process:
        self.look_at_processes()
        return Process(args, env, self.logs / f"{name}.log")

    def look_at_processes(self) -> None:
        """Remembers every command line on the machine now (the secrets must be in none of them)."""
        for proc in psutil.process_iter(["cmdline"]):
            self.command_lines.add(" ".join(proc.info["cmdline"] or []))


@pytest.fixture(scope="module")
def team_up(request):
    # PostgreSQL runs as the `postgres` user, which must reach its folder: not under pytest's 700 tmp
    base = Path(tempfile.mkdtemp(prefix="lw-team-", dir="/tmp"))
    base.chmod(0o755)
    (base / "logs").mkdir()
    under_test = TeamUnderTest(base / "team", base / "logs",
                               {s: free_port() for s in ("postgres", "mlflow", "prefect", "s3")}, "")
    under_test.s3_endpoint = f"http://127.0.0.1:{under_test.ports['s3']}"
    keep = False
    moto = Process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(under_test.ports["s3"])],
                   base_env(**AWS), under_test.logs / "moto.log")
    try:
        wait_healthy(f"{under_test.s3_endpoint}/moto-api/", moto, timeout=300)
        import boto3

        boto3.client("s3", endpoint_url=under_test.s3_endpoint, **_aws()).create_bucket(Bucket=BUCKET)
        started = time.monotonic()
        up = under_test.team("up", *[f"--{s}-port={under_test.ports[s]}" for s in ("postgres", "mlflow", "prefect")],
                             f"--artifacts=s3://{BUCKET}/artifacts", f"--s3-endpoint={under_test.s3_endpoint}")
        under_test.up_output = up.stdout + up.stderr
        assert up.returncode == 0, under_test.up_output[-4000:]
        print(f"\nteam up: {time.monotonic() - started:.0f} s")
        yield under_test
    except BaseException:
        keep = True
        raise
    finally:
        under_test.team("down", timeout=600)  # the last test checks it stops everything; this is the safety net
        moto.stop()
        if keep or request.session.testsfailed:
            print(f"\nteam test logs kept in {base}/logs and {base}/team/logs")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _aws() -> dict:
    return {"aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
            "region_name": AWS["AWS_DEFAULT_REGION"]}


def s3_keys(team: TeamUnderTest) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=team.s3_endpoint, **_aws())
    return [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for obj in page.get("Contents", [])]
