import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
REPO = Path(__file__).resolve().parent.parent


def mnist_root() -> Path:
    """The official files: $MNIST_ROOT, else ../shared/data beside the checkout."""
    return Path(os.environ.get("MNIST_ROOT") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A private MLflow sqlite store and scratch folder for one test."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LAYERWISE_WORKDIR", str(tmp_path / "work"))
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
