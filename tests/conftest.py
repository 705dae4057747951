import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
REPO = Path(__file__).resolve().parent.parent

# The fast tier (`pytest -m "not slow"`, `make test-fast`) leaves out every test that spawns a process,
# starts a server, runs a flow under the Prefect test harness or reads the full MNIST. Files that hold
# only such tests say so with `pytestmark = pytest.mark.slow`; the few in otherwise fast files are named
# here, and any test that takes the prefect_harness fixture is slow wherever it is.
SLOW_TESTS = {
    "test_config_guards.py::test_cli_refuses_the_bomb_with_one_line_and_exit_2": "runs `layerwise validate`",
    "test_data.py::test_split_is_deterministic_disjoint_and_subsets_stay_in_train": "reads the full MNIST",
    "test_data.py::test_verify_accepts_the_official_files": "checksums the full MNIST",
    "test_data.py::test_corrupt_file_is_reported_by_name": "copies the full MNIST",
}
SLOW_FIXTURES = {"prefect_harness"}


def pytest_addoption(parser):
    parser.addoption("--team", action="store_true", help="run tests/team/ (make test-team): team mode on real "
                     "PostgreSQL, MLflow and Prefect servers; left out of make test")


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == "team" and collection_path.parent == REPO / "tests" and not config.getoption("--team"):
        return True
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    found = set()
    for item in items:
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if name in SLOW_TESTS or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            found.add(name)
    # a renamed test would drop out of SLOW_TESTS silently and slow the fast tier down: say so
    collected_files = {item.path.name for item in items}
    if not any("::" in arg for arg in config.args):
        for name in SLOW_TESTS:
            if name.split("::")[0] in collected_files and name not in found:
                warnings.warn(pytest.PytestWarning(f"tests/conftest.py SLOW_TESTS names {name}, which is not "
                                                   f"collected: renamed? (it would run in the fast tier)"))


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
