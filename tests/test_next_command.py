"""The command a run's summary names to open it works as printed: `make ui` where that opens the
run's store with the run's venv, else the venv's own mlflow by its full path."""
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from flows.cli import ui_command
from layerwise.paths import MLRUNS

pytestmark = pytest.mark.slow  # runs make and mlflow

BARE = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}  # a fresh shell: no venv on PATH


def test_another_store_is_opened_by_the_venvs_mlflow_by_its_full_path(tmp_path):
    uri = f"sqlite:///{tmp_path / 'my store' / 'mlflow.db'}"
    command = shlex.split(ui_command(uri))
    assert Path(command[0]).is_absolute() and command[-2:] == ["--backend-store-uri", uri]
    parsed = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=300, env=BARE)
    assert parsed.returncode == 0 and "--backend-store-uri" in parsed.stdout, parsed.stderr[-3000:]


def test_the_default_store_run_from_the_checkouts_venv_is_opened_by_make_ui(monkeypatch):
    default, venv = f"sqlite:///{MLRUNS / 'mlflow.db'}", str(REPO / ".venv")  # what `make run` runs with
    monkeypatch.chdir(REPO)
    assert ui_command(default, venv) == "make ui"
    assert ui_command(default, "/elsewhere/venv").startswith("/")  # another venv: its own mlflow, not make's
    monkeypatch.chdir("/")
    command = ui_command(default, venv)
    assert command == f"make -C {shlex.quote(str(REPO))} ui"
    # the target exists and make accepts it (-n: print what it would run, run nothing)
    parsed = subprocess.run(shlex.split(command) + ["-n"], capture_output=True, text=True, timeout=120, env=BARE)
    assert parsed.returncode == 0 and "mlflow ui --backend-store-uri sqlite:///" in parsed.stdout, parsed.stderr
