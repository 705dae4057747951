"""The label ablation on the smoke data: one stack, a grid of cells, the results on the parent run."""
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from flows.pipeline import layerwise_pipeline

pytestmark = pytest.mark.slow

CELLS = {(labels, seed, init) for labels in (20, 50) for seed in (0, 1) for init in ("pretrained", "scratch")}


def _cells(client, result):
    runs = client.search_runs([result.experiment_id],
                              f"tags.mlflow.parentRunId = '{result.parent_run_id}' and tags.`layerwise.stage` = 'finetune'")
    return {(int(r.data.tags["layerwise.labels"]), int(r.data.tags["layerwise.seed"]), r.data.tags["layerwise.init"]): r
            for r in runs}


def test_ablation_grid_records_every_cell_and_the_summary(prefect_harness, tracking, tmp_path, caplog):
    result = layerwise_pipeline("smoke-ablation", data_root=str(mnist_root()))
    # a line per cell as it ends: its result, the cells done / total and the time left
    grid = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[grid] cell ")]
    assert len(grid) == 8 and all("test error" in line for line in grid)
    assert [line.split(" · ")[1].split(" ")[0] for line in grid] == [f"{n}/8" for n in range(1, 9)]
    assert all(line.endswith(" left") for line in grid[1:-1]) and " cells done in " in grid[-1]
    client = MlflowClient()
    # a grid shorter than the sampling interval (10 s) still has system metrics: at its start and end
    assert len(client.get_metric_history(result.parent_run_id, "system/cpu_utilization_percentage")) >= 2
    cells = _cells(client, result)
    assert set(cells) == CELLS
    assert all(run.info.status == "FINISHED" and "test_error" in run.data.metrics for run in cells.values())
    stages = client.search_runs([result.experiment_id],
                                f"tags.mlflow.parentRunId = '{result.parent_run_id}' and tags.`layerwise.stage` LIKE 'pretrain-%'")
    assert sorted(r.data.tags["layerwise.stage"] for r in stages) == ["pretrain-1", "pretrain-2"]  # trained once

    parent = result.parent_run_id
    assert sorted(a.path for a in client.list_artifacts(parent)) == ["ablation.png", "paired.csv", "pipeline.yaml",
                                                                    "report.md", "results.csv", "summary.md"]
    frame = pd.read_csv(client.download_artifacts(parent, "results.csv", str(tmp_path)))
    assert len(frame) == 8 and set(frame["init"]) == {"pretrained", "scratch"}
    by_run = {run.info.run_id: run.data.metrics["test_error"] for run in cells.values()}
    assert all(by_run[row.run_id] == pytest.approx(row.test_error) for row in frame.itertuples())
    summary = open(client.download_artifacts(parent, "summary.md", str(tmp_path))).read()
    assert "| 20 |" in summary and "gain pretrained − scratch" in summary
    metrics = client.get_run(parent).data.metrics
    expected = frame[(frame["labels"] == 50) & (frame["init"] == "scratch")]["test_error"].mean()
    assert metrics["mean_test_error/50/scratch"] == pytest.approx(expected)
    assert "gain/20" in metrics

    # nested label sets: for one seed the 20-label subset lies inside the 50-label one
    import json

    def subset(key):
        folder = tmp_path / f"{key[2]}-{key[0]}-{key[1]}"
        folder.mkdir(exist_ok=True)
        return set(json.load(open(client.download_artifacts(cells[key].info.run_id, "label_subset.json", str(folder)))))

    assert subset((20, 0, "pretrained")) < subset((50, 0, "pretrained"))
    assert subset((20, 0, "pretrained")) == subset((20, 0, "scratch"))


def test_a_second_run_trains_nothing_and_links_what_it_reuses(prefect_harness, tracking):
    first = layerwise_pipeline("smoke-ablation", data_root=str(mnist_root()))
    second = layerwise_pipeline("smoke-ablation", data_root=str(mnist_root()))
    assert all(cell["trained_by"] != cell["run_id"] for cell in second.outcome.cells)
    assert {c["trained_by"] for c in second.outcome.cells} == {c["run_id"] for c in first.outcome.cells}
    client = MlflowClient()
    stages = client.search_runs([second.experiment_id],
                                f"tags.mlflow.parentRunId = '{second.parent_run_id}' and tags.`layerwise.stage` LIKE 'pretrain-%'")
    assert all(run.data.tags["layerwise.reused"] == "true" for run in stages)
    assert [c["test_error"] for c in second.outcome.cells] == [c["test_error"] for c in first.outcome.cells]


def test_unlabelled_objectives_are_rows_beside_the_plain_ones(prefect_harness, tracking, tmp_path):
    """A smoke grid with unlabelled objectives: each its own row of the summary and its own
    metrics, the plain rows unchanged, every unlabelled cell fed the images it has no label for."""
    inits = ("[pretrained, scratch, pretrained+pseudo_label, pretrained+reconstruction, scratch+consistency, "
             "pretrained+virtual_adversarial]")
    one = ["ablation.seeds=[0]", "ablation.labels=[20]", "finetune.min_steps=30"]  # the ramp needs steps
    result = layerwise_pipeline("smoke-ablation", [f"ablation.inits={inits}", *one], data_root=str(mnist_root()))
    plain = layerwise_pipeline("smoke-ablation", one, data_root=str(mnist_root()))
    client = MlflowClient()
    runs = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}' and "
                                                      f"tags.`layerwise.stage` = 'finetune'")
    by_method = {r.data.tags["layerwise.method"]: r for r in runs}
    assert set(by_method) == {"pretrained", "scratch", "pretrained+pseudo_label", "pretrained+reconstruction",
                              "scratch+consistency", "pretrained+virtual_adversarial"}
    assert by_method["pretrained+reconstruction"].data.tags["layerwise.unlabelled"] == "reconstruction"
    assert "layerwise.unlabelled" not in by_method["pretrained"].data.tags
    rows = {row["init"]: row for row in result.outcome.cells}
    plain_rows = {row["init"]: row for row in plain.outcome.cells}
    for init in ("pretrained", "scratch"):  # the plain cells: the same cells (reused), the same errors
        assert rows[init]["test_error"] == plain_rows[init]["test_error"]
    # the objectives changed the training (the smoke cells are too short to move the test error)
    last_loss = {m: client.get_metric_history(by_method[m].info.run_id, "train_loss")[-1].value
                 for m in ("pretrained", "pretrained+pseudo_label", "pretrained+reconstruction",
                           "pretrained+virtual_adversarial")}
    assert len(set(last_loss.values())) == 4, last_loss
    metrics = client.get_run(result.parent_run_id).data.metrics
    assert "mean_test_error/20/pretrained_plus_pseudo_label" in metrics
    assert "gain_pretrained+reconstruction/20".replace("+", "_plus_") in metrics
    summary = open(client.download_artifacts(result.parent_run_id, "summary.md", str(tmp_path))).read()
    assert "pretrained+pseudo_label error %" in summary and "scratch+consistency error %" in summary
