"""Tasks through .fn: real MNIST slices, a private MLflow store, no Prefect run."""
import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from layerwise.store.checkpoint import load_encoder
from layerwise.store.files import load_inputs, load_labels
from layerwise.config import PipelineConfig
from tasks import tracking as tr
from tasks.data import prepare_data
from tasks.finetune import finetune
from tasks.context import RunContext
from tasks.pretrain import pretrain_layer

pytestmark = pytest.mark.slow

CONFIG = {
    "data": {"train_size": 300, "val_size": 60},
    "layers": [{"size": 32, "epochs": 2, "lr": 0.003, "l1": 0.01, "batch_size": 32},
               {"size": 16, "epochs": 1, "lr": 0.003, "batch_size": 32}],
    "finetune": {"labels": 100, "epochs": 2, "lr": 0.1, "batch_size": 20, "seed": 3},
}


def _parent(client):
    experiment_id = tr.ensure_experiment(client, "tasks")
    return experiment_id, tr.start_run(client, experiment_id, "parent", {tr.PIPELINE_TAG: "tasks"})


def test_prepare_data_writes_splits(tmp_path, tracking):
    cfg = PipelineConfig.model_validate(CONFIG)
    out = prepare_data.fn(str(mnist_root()), cfg.data, str(tmp_path / "w"))
    inputs, labels = load_inputs(out.inputs), load_labels(out.labels)
    assert {k: tuple(v.shape) for k, v in inputs.items()} == {"train": (240, 784), "val": (60, 784), "test": (10000, 784)}
    assert len(labels.train_ids) == 240 and len(labels.val) == 60 and labels.shape == (1, 28, 28)


def test_pretrain_task_trains_logs_and_encodes(tmp_path, tracking):
    cfg = PipelineConfig.model_validate(CONFIG)
    client = MlflowClient()
    experiment_id, parent = _parent(client)
    data = prepare_data.fn(str(mnist_root()), cfg.data, str(tmp_path / "w"))
    run_ctx = RunContext(parent, experiment_id, "tasks", tmp_path / "w")
    stage = pretrain_layer.fn(run_ctx, cfg.layers[0], load_inputs(data.inputs), 0, 1, "key-1")
    run = client.get_run(stage.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["layerwise.stage"] == "pretrain-1" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["layer.l1"] == "0.01" and run.data.params["layer.input"] == "784"
    history = client.get_metric_history(stage.run_id, "recon_loss")
    assert [m.step for m in history] == [1, 2]
    assert {"val_recon_loss", "code_l1", "code_active_frac"} <= set(run.data.metrics)
    assert {k: tuple(v.shape) for k, v in stage.codes.items()} == {"train": (240, 32), "val": (60, 32),
                                                                 "test": (10000, 32)}
    encoder, saved_config = load_encoder(stage.weights)
    assert saved_config["layer"]["size"] == 32 and saved_config["layer"]["loss"] == "bce"
    assert torch.equal(encoder[0].weight, stage.encoder[0].weight)  # the stored stage is the one in memory
    assert [a.path for a in client.list_artifacts(stage.run_id)] == ["pretrain-1.pt"]


def test_finetune_task_logs_registers_and_records_the_subset(tmp_path, tracking):
    cfg = PipelineConfig.model_validate(CONFIG)
    client = MlflowClient()
    experiment_id, parent = _parent(client)
    data = prepare_data.fn(str(mnist_root()), cfg.data, str(tmp_path / "w"))
    weights, codes = [], torch.load(data.inputs)
    for index, layer in enumerate(cfg.layers, 1):
        stage = pretrain_layer.fn(RunContext(parent, experiment_id, "tasks", tmp_path / "w"), layer, codes, 0, index,
                                  f"key-{index}")
        weights.append(stage.weights)
        codes = stage.codes
    result = finetune.fn(RunContext(parent, experiment_id, "tasks", tmp_path / "w"), cfg, data, weights)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["layerwise.labels"] == "100"
    assert abs(run.data.metrics["test_error"] - 100 * (1 - run.data.metrics["test_accuracy"])) < 1e-9
    assert len(client.get_metric_history(result.run_id, "val_accuracy")) == 2
    subset = json.loads(open(client.download_artifacts(result.run_id, "label_subset.json", str(tmp_path))).read())
    assert len(subset) == 100 and set(subset) <= set(load_labels(data.labels).train_ids)
    [version] = client.search_model_versions("name='tasks-classifier'")
    assert version.run_id == result.run_id


def test_a_stage_with_a_known_key_is_reused_not_retrained(tmp_path, tracking):
    cfg = PipelineConfig.model_validate(CONFIG)
    client = MlflowClient()
    experiment_id, parent = _parent(client)
    data = prepare_data.fn(str(mnist_root()), cfg.data, str(tmp_path / "w"))
    inputs = load_inputs(data.inputs)
    first = pretrain_layer.fn(RunContext(parent, experiment_id, "tasks", tmp_path / "w1"), cfg.layers[0], inputs, 0,
                              1, "same-key")
    second = pretrain_layer.fn(RunContext(parent, experiment_id, "tasks", tmp_path / "w2"), cfg.layers[0], inputs,
                               0, 1, "same-key")
    assert second.trained_by == first.run_id != second.run_id
    assert second.model is None  # nothing trained
    reused = client.get_run(second.run_id)
    assert reused.data.tags["layerwise.reused"] == "true"
    assert reused.data.tags["layerwise.pretrain_run_id"] == first.run_id
    assert reused.info.run_name.endswith("(reused)")
    # no training happened: one copied point per metric, at the last epoch, equal to the original's
    history = client.get_metric_history(second.run_id, "recon_loss")
    assert [(m.step, m.value) for m in history] == [(2, client.get_run(first.run_id).data.metrics["recon_loss"])]
    assert torch.equal(first.codes["val"], second.codes["val"])
