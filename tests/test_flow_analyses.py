"""The deep-autoencoder use case and the variant / conv grid on the smoke data, under a Prefect
test harness with a private MLflow store: the run tree, metrics and figures a user opens."""
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from flows.pipeline import layerwise_pipeline

pytestmark = pytest.mark.slow


def test_deep_autoencoder_is_unrolled_compared_with_pca_and_mapped(prefect_harness, tracking, tmp_path):
    result = layerwise_pipeline("smoke-deep-ae", data_root=str(mnist_root()))
    client = MlflowClient()
    runs = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    stages = sorted(run.data.tags["layerwise.stage"] for run in runs)
    assert stages == ["pca", "pretrain-1", "pretrain-2", "retrieval", "unroll"]
    assert all(run.info.status == "FINISHED" for run in runs)
    by_stage = {run.data.tags["layerwise.stage"]: run for run in runs}

    unroll = by_stage["unroll"]
    assert unroll.data.metrics["test_sq_error"] == pytest.approx(result.outcome.test_sq_error)
    assert [m.step for m in client.get_metric_history(unroll.info.run_id, "val_sq_error")] == [1, 2]
    assert [a.path for a in client.list_artifacts(unroll.info.run_id)] == ["deep-autoencoder.pt"]
    pca = by_stage["pca"]
    assert pca.info.run_name == "pca-2" and pca.data.metrics["test_sq_error"] == pytest.approx(result.outcome.pca_test_sq_error)

    parent = client.get_run(result.parent_run_id)
    for key in ("test_sq_error", "pca_test_sq_error", "test_sq_error_stacked", "wall_seconds"):
        assert key in parent.data.metrics
    assert 0 <= parent.data.metrics["precision_at_5/code/unrolled"] <= 1
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {"figures/reconstructions.png", "figures/map-2d.png", "figures/decoded-grid.png",
                       "figures/retrieval-unrolled.png"}
    for figure in figures:
        assert open(client.download_artifacts(parent.info.run_id, figure, str(tmp_path)), "rb").read(4) == b"\x89PNG"

    hits = by_stage["retrieval"]
    assert hits.data.params["queries"] == "200" and hits.data.params["code_width"] == "2"
    assert set(hits.data.metrics) == {"precision_at_5/code", "precision_at_5/pixels"}
    assert [a.path for a in client.list_artifacts(hits.info.run_id, "figures")] == ["figures/retrieval-unrolled.png"]


def test_a_deep_autoencoder_trains_on_every_image_when_val_size_is_0(prefect_harness, tracking):
    # what deep-ae's sweep.final_set does: the chosen recipe retrained on the validation images too
    result = layerwise_pipeline("smoke-deep-ae", ["data.val_size=0"], data_root=str(mnist_root()))
    client = MlflowClient()
    runs = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    pretrain = next(run for run in runs if run.data.tags["layerwise.stage"] == "pretrain-1")
    assert (pretrain.data.params["train_images"], pretrain.data.params["val_images"]) == ("500", "0")
    unroll = client.get_run(result.outcome.unroll_run_id)
    assert unroll.info.status == "FINISHED"
    assert "val_sq_error" not in unroll.data.metrics and unroll.data.metrics["test_sq_error"] > 0
    assert result.outcome.test_sq_error == pytest.approx(unroll.data.metrics["test_sq_error"])


def test_variant_grid_pretrains_one_conv_stack_per_variant_and_shares_the_control(prefect_harness, tracking,
                                                                                 tmp_path):
    result = layerwise_pipeline("smoke-conv", data_root=str(mnist_root()))
    client = MlflowClient()
    runs = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    stages = [run for run in runs if run.data.tags["layerwise.stage"].startswith("pretrain")]
    assert len(stages) == 4  # two layers for each of two variants
    titles = sorted(run.info.run_name for run in stages)
    assert any("4c3p2" in t and "l1=0.05" in t for t in titles) and any("gaussian0.1" in t for t in titles)
    cells = [run for run in runs if run.data.tags["layerwise.stage"] == "finetune"]
    assert sorted(run.data.tags.get("layerwise.variant", run.data.tags["layerwise.init"]) for run in cells) == \
        ["denoising", "scratch", "sparse"]
    frame = pd.read_csv(client.download_artifacts(result.parent_run_id, "results.csv", str(tmp_path)))
    assert set(frame["init"]) == {"sparse", "denoising", "scratch"}
    summary = open(client.download_artifacts(result.parent_run_id, "summary.md", str(tmp_path))).read()
    assert "gain sparse − scratch" in summary and "gain denoising − scratch" in summary
    metrics = client.get_run(result.parent_run_id).data.metrics
    assert {"gain_sparse/50", "gain_denoising/50", "precision_at_5/code/sparse",
            "precision_at_5/pixels/denoising"} <= set(metrics)
    assert sorted(run.info.run_name for run in runs if run.data.tags["layerwise.stage"] == "retrieval") == \
        ["retrieval denoising", "retrieval sparse"]


def test_a_second_deep_autoencoder_run_reuses_the_fine_tuned_network(prefect_harness, tracking):
    first = layerwise_pipeline("smoke-deep-ae", data_root=str(mnist_root()))
    second = layerwise_pipeline("smoke-deep-ae", data_root=str(mnist_root()))
    assert second.outcome.unroll_trained_by == first.outcome.unroll_run_id != second.outcome.unroll_run_id
    assert second.outcome.test_sq_error == first.outcome.test_sq_error
    assert second.retrieval["unrolled"]["precision_at_5/code"] == first.retrieval["unrolled"]["precision_at_5/code"]
    run = MlflowClient().get_run(second.outcome.unroll_run_id)
    assert run.data.tags["layerwise.reused"] == "true" and run.data.tags["layerwise.unroll_run_id"] == first.outcome.unroll_run_id
