"""The smoke pipeline on real MNIST under a Prefect test harness, with a private MLflow store."""
import asyncio

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from flows.pipeline import layerwise_pipeline

pytestmark = pytest.mark.slow

STAGES = ["pretrain-1", "pretrain-2", "pretrain-3", "finetune"]


def _children(client, parent_id, experiment_id):
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.data.tags["layerwise.stage"]: run for run in runs}


def _parents(client, experiment_id, status):
    runs = client.search_runs([experiment_id], f"tags.`layerwise.pipeline` = 'smoke' and attributes.status = '{status}'")
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def _task_run_names(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as prefect:
            runs = await prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {run.name for run in runs}

    return asyncio.run(read())


def test_smoke_pipeline_builds_the_whole_run_tree(prefect_harness, tracking, tmp_path):
    result = layerwise_pipeline("smoke", data_root=str(mnist_root()))
    client = MlflowClient()
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location.startswith((tmp_path / "mlruns" / "artifacts").as_uri())

    [parent] = _parents(client, experiment.experiment_id, "FINISHED")
    assert parent.info.run_id == result.parent_run_id
    assert parent.data.metrics["test_error"] == pytest.approx(result.outcome.test_error)
    assert parent.data.params["finetune.labels"] == "200" and parent.data.params["layers.0.l1"] == "0.03"
    device = "cuda" if torch.cuda.is_available() else "cpu"  # device: auto
    assert parent.data.params["resolved_device"].startswith(device)
    assert parent.data.tags["layerwise.device"] == parent.data.params["resolved_device"]
    logged = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "pipeline.yaml", str(tmp_path))))
    assert logged["pipelines"]["smoke"]["layers"][2]["size"] == 500

    children = _children(client, parent.info.run_id, experiment.experiment_id)
    assert sorted(children) == sorted(STAGES)
    for index in (1, 2, 3):
        run = children[f"pretrain-{index}"]
        assert run.info.status == "FINISHED" and run.info.run_name.startswith(f"pretrain-{index} ")
        assert run.data.tags["layerwise.pipeline"] == "smoke"
        assert run.data.tags["layerwise.device"] == parent.data.tags["layerwise.device"]
        assert run.data.params["layer.size"] == ["1000", "1000", "500"][index - 1]
        for metric in ("recon_loss", "val_recon_loss", "code_l1", "code_active_frac"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"pretrain-{index}.pt"]
    tuned = children["finetune"]
    assert tuned.info.status == "FINISHED"
    assert tuned.data.params["finetune.init"] == "pretrained" and tuned.data.params["n_labels"] == "200"
    for metric in ("train_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(tuned.info.run_id, metric)] == [1]
    assert tuned.data.metrics["test_error"] == pytest.approx(parent.data.metrics["test_error"])
    assert 0 <= tuned.data.metrics["test_accuracy"] <= 1
    [version] = client.search_model_versions("name='smoke-classifier'")
    assert version.run_id == tuned.info.run_id

    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    names = _task_run_names(flow_run_id)
    assert {"pretrain-1", "pretrain-2", "pretrain-3", "finetune-pretrained-200-seed0"} <= names


def test_scratch_control_lands_in_the_same_experiment(prefect_harness, tracking):
    result = layerwise_pipeline("smoke", ["finetune.init=scratch"], data_root=str(mnist_root()))
    client = MlflowClient()
    children = _children(client, result.parent_run_id, result.experiment_id)
    assert list(children) == ["finetune"]  # no pretraining for the control
    assert children["finetune"].data.tags["layerwise.init"] == "scratch"
    assert client.get_experiment_by_name("smoke").experiment_id == result.experiment_id


def test_a_diverging_stage_fails_its_runs(prefect_harness, tracking):
    from layerwise.train.loop import DivergedError

    with pytest.raises(DivergedError, match=r"stage finetune pretrained-200-seed0: loss became nan in epoch 1; look at finetune\.lr"):
        layerwise_pipeline("smoke", [f"layers.{i}.activation=relu" for i in range(3)] + ["finetune.lr=1e3"],
                           data_root=str(mnist_root()))
    client = MlflowClient()
    experiment = client.get_experiment_by_name("smoke")
    [parent] = _parents(client, experiment.experiment_id, "FAILED")
    children = _children(client, parent.info.run_id, experiment.experiment_id)
    assert children["finetune"].info.status == "FAILED"
    assert all(children[f"pretrain-{i}"].info.status == "FINISHED" for i in (1, 2, 3))


def test_a_second_run_reuses_every_stage_and_links_the_runs_that_trained_them(prefect_harness, tracking):
    first = layerwise_pipeline("smoke", data_root=str(mnist_root()))
    second = layerwise_pipeline("smoke", ["finetune.seed=1"], data_root=str(mnist_root()))
    client = MlflowClient()
    trained = _children(client, first.parent_run_id, first.experiment_id)
    reused = _children(client, second.parent_run_id, second.experiment_id)
    for index in (1, 2, 3):
        stage = f"pretrain-{index}"
        assert "layerwise.reused" not in trained[stage].data.tags
        assert reused[stage].data.tags["layerwise.reused"] == "true"
        assert reused[stage].data.tags["layerwise.pretrain_run_id"] == trained[stage].info.run_id
    assert reused["finetune"].data.tags["layerwise.seed"] == "1"


def test_a_diverging_pretraining_stage_stops_naming_its_settings_and_keeps_earlier_stages(prefect_harness, tracking,
                                                                                             tmp_path):
    from layerwise.train.loop import DivergedError

    bad = ["layers.1.activation=relu", "layers.1.loss=mse", "layers.1.optimizer=sgd", "layers.1.lr=1e6"]
    with pytest.raises(DivergedError, match=r"stage pretrain-2: loss became (nan|inf) in epoch 1; look at "
                                            r"layers\.1\.lr \(1000000\.0\), layers\.1\.l1"):
        layerwise_pipeline("smoke", bad, data_root=str(mnist_root()))
    client = MlflowClient()
    experiment = client.get_experiment_by_name("smoke")
    [parent] = _parents(client, experiment.experiment_id, "FAILED")
    children = _children(client, parent.info.run_id, experiment.experiment_id)
    assert {stage: run.info.status for stage, run in children.items()} == {"pretrain-1": "FINISHED",
                                                                           "pretrain-2": "FAILED"}
    weights = client.download_artifacts(children["pretrain-1"].info.run_id, "pretrain-1.pt", str(tmp_path))
    assert torch.load(weights, weights_only=True)["encoder"]["0.weight"].shape == (1000, 784)
