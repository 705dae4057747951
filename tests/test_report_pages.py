"""`layerwise report NAME` on smoke runs in a temporary sqlite store: a grid (smoke-ablation), a
fine-tune (smoke) and a deep autoencoder (smoke-deep-ae), every number of each page checked against
the MLflow runs it came from (tests/report_checks.py; the sweep's page: tests/test_sweep_resume.py);
the page each run left on its parent run and as its flow run's Prefect markdown artifact; a docs
section rewritten from the store and nothing else in the file touched."""
import asyncio

import pytest
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from flows.cli import main
from flows.pipeline import layerwise_pipeline
from report_checks import check_grid, check_single

pytestmark = pytest.mark.slow

PIPELINES = ("smoke-ablation", "smoke", "smoke-deep-ae")


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    """The three smoke pipelines, once, in one store (the module's tests only read it)."""
    root = tmp_path_factory.mktemp("report-store")
    with pytest.MonkeyPatch.context() as patch:
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("LAYERWISE_WORKDIR", str(root / "work"))
        results = {name: layerwise_pipeline(name, data_root=str(mnist_root())) for name in PIPELINES}
        yield uri, results


def _report(name, uri, capsys, *extra):
    assert main(["report", name, "--tracking-uri", uri, *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name, check", [("smoke-ablation", check_grid), ("smoke", check_single),
                                         ("smoke-deep-ae", check_single)])
def test_every_number_of_a_report_is_the_runs(runs, name, check, capsys):
    uri, results = runs
    text = _report(name, uri, capsys, "--out", "-")
    client = MlflowClient(uri)
    check(text, client, client.get_run(results[name].parent_run_id))


def test_the_report_is_written_with_its_figures(runs, capsys, tmp_path):
    uri, results = runs
    out = tmp_path / "deep"
    said = _report("smoke-deep-ae", uri, capsys, "--out", str(out))
    assert str(out / "report.md") in said and "with 4 figure(s)" in said
    page = (out / "report.md").read_text()
    for figure in ("reconstructions", "map-2d", "decoded-grid", "retrieval-unrolled"):
        assert f"](figures/{figure}.png)" in page
        assert (out / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"


def _prefect_markdown(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as prefect:
            return await prefect.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return {a.key: a for a in asyncio.run(read()) if a.type == "markdown"}


@pytest.mark.parametrize("name", PIPELINES)
def test_each_run_leaves_its_report_in_mlflow_and_in_prefect(runs, name, capsys, tmp_path):
    uri, results = runs
    client = MlflowClient(uri)
    parent = client.get_run(results[name].parent_run_id)
    logged = open(client.download_artifacts(parent.info.run_id, "report.md", str(tmp_path))).read()
    # the same page as `layerwise report` reads later, but for the source line (the run had not ended)
    later = _report(name, uri, capsys, "--out", "-")
    assert logged.splitlines()[3:] == later.splitlines()[3:]
    assert "written as it ended" in logged.splitlines()[2]
    markdown = _prefect_markdown(parent.data.tags["prefect.flow_run_id"])
    assert markdown[f"{name}-report"].data == logged


def test_into_rewrites_its_section_only(runs, capsys, tmp_path):
    uri, results = runs
    docs = tmp_path / "results.md"
    docs.write_text("# Results\n\nprose kept\n\n<!-- report:smoke-ablation -->\ntyped by hand\n<!-- /report -->\n\n"
                    "<!-- report:other -->\nleft alone\n<!-- /report -->\nthe end\n")
    said = _report("smoke-ablation", uri, capsys, "--into", str(docs))
    assert f"section report:smoke-ablation rewritten from MLflow run {results['smoke-ablation'].parent_run_id}" in said
    text = docs.read_text()
    assert "typed by hand" not in text and "prose kept" in text and "left alone" in text and text.endswith("the end\n")
    body = text.split("<!-- report:smoke-ablation -->\n")[1].split("<!-- /report -->")[0]
    assert body.startswith("_Written by `layerwise report smoke-ablation --into")
    page = _report("smoke-ablation", uri, capsys, "--out", "-")
    tables = "\n".join(line for line in page.split("\n\n", 2)[2].splitlines() if not line.startswith("!["))
    assert body.split("_\n\n", 1)[1].strip() == tables.strip()  # the page's tables, as printed
    again = docs.read_text()
    _report("smoke-ablation", uri, capsys, "--into", str(docs))
    assert docs.read_text() == again  # rewriting from the same run changes nothing


def test_a_run_of_another_experiment_or_none_is_bad_input(runs, capsys):
    uri, results = runs
    assert main(["report", "smoke", "--tracking-uri", uri, "--run", results["smoke-ablation"].parent_run_id]) == 2
    assert "is not in experiment 'smoke'" in capsys.readouterr().err
    assert main(["report", "smoke", "--tracking-uri", uri, "--sweep"]) == 2
    assert "has no finished sweep" in capsys.readouterr().err
