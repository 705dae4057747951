"""Issue 10, cases 5 and 6, through the tasks (.fn, real MNIST slices, private MLflow stores): a
damaged or edited store entry is set aside with a warning and the work redone; a stage reused
under another tracking store carries its weights into that store."""
import json
import logging

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from layerwise.config import DataConfig, PipelineConfig
from layerwise.paths import work_root
from layerwise.store.files import load_inputs
from tasks import tracking as tr
from tasks.data import prepare_data
from tasks.finetune import finetune
from tasks.context import RunContext
from tasks.pretrain import StackFiles, pretrain_layer
from tasks.unroll import unroll_finetune

pytestmark = pytest.mark.slow

LAYERS = [{"size": 32, "epochs": 1, "lr": 0.003, "batch_size": 32},
          {"size": 2, "activation": "linear", "epochs": 1, "lr": 0.003, "batch_size": 32}]
DATA = {"train_size": 300, "val_size": 60}
STACK = PipelineConfig.model_validate({"data": DATA, "layers": LAYERS,
                                       "unroll": {"epochs": 1, "lr": 0.001, "batch_size": 64}})


def _parent(client, name="damage"):
    experiment_id = tr.ensure_experiment(client, name)
    return experiment_id, tr.start_run(client, experiment_id, "parent", {tr.PIPELINE_TAG: name})


def _data(tmp_path):
    return prepare_data.fn(str(mnist_root()), DataConfig.model_validate(DATA), str(tmp_path / "w"))


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "layerwise" and r.levelno == logging.WARNING]


def test_a_stage_whose_stored_weights_are_damaged_is_retrained_with_a_warning(tmp_path, tracking, caplog):
    client = MlflowClient()
    experiment_id, parent = _parent(client)
    data = _data(tmp_path)
    inputs = load_inputs(data.inputs)
    first = pretrain_layer.fn(RunContext(parent, experiment_id, "damage", tmp_path / "w1"), STACK.layers[0], inputs,
                              0, 1, "stage-key")
    stored = work_root() / "stages" / "stage-key" / "pretrain-1.pt"
    stored.write_bytes(stored.read_bytes()[:1000])  # truncated: torch cannot load it

    with caplog.at_level(logging.WARNING, logger="layerwise"):
        second = pretrain_layer.fn(RunContext(parent, experiment_id, "damage", tmp_path / "w2"), STACK.layers[0],
                                   inputs, 0, 1, "stage-key")
    assert second.trained_by == second.run_id != first.run_id  # retrained, not reused
    run = client.get_run(second.run_id)
    assert run.info.status == "FINISHED" and "layerwise.reused" not in run.data.tags
    [line] = _warnings(caplog)
    assert str(stored.parent) in line and "pretrain-1.pt does not match its checksum" in line
    [aside] = (work_root() / "stages" / ".damaged").iterdir()
    assert aside.name.startswith("stage-key-") and (aside / "pretrain-1.pt").stat().st_size == 1000
    assert torch.load(second.weights, weights_only=True)["config"]["index"] == 1  # a sound entry again


def test_an_ablation_cell_whose_stored_test_error_was_edited_is_recomputed(tmp_path, tracking, caplog):
    client = MlflowClient()
    experiment_id, parent = _parent(client)
    data = _data(tmp_path)
    cfg = PipelineConfig.model_validate({
        "data": DATA, "layers": LAYERS[:1],
        "finetune": {"init": "scratch", "labels": 50, "epochs": 1, "lr": 0.1, "batch_size": 25, "seed": 0}})
    args = (RunContext(parent, experiment_id, "damage", tmp_path / "w"), cfg, data, [], 1, "cell-key")
    first = finetune.fn(*args, register_model=False)
    meta_file = work_root() / "cells" / "cell-key" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["metrics"]["test_error"] = 0.01  # a better result than was measured
    meta_file.write_text(json.dumps(meta, indent=2))

    with caplog.at_level(logging.WARNING, logger="layerwise"):
        second = finetune.fn(*args, register_model=False)
    assert second.trained_by == second.run_id != first.run_id  # recomputed, not trusted
    assert second.test_error != 0.01 and client.get_run(second.run_id).data.metrics["test_error"] != 0.01
    [line] = _warnings(caplog)
    assert str(meta_file.parent) in line and "meta.json does not match its checksum" in line
    # the recomputed cell is stored again and reused as is by the next run
    third = finetune.fn(*args, register_model=False)
    assert third.trained_by == second.run_id and third.test_error == second.test_error


def test_stages_and_the_unrolled_model_reused_under_another_tracking_store_carry_their_weights(
        tmp_path, tracking, monkeypatch):
    data = _data(tmp_path)
    cfg = STACK

    def run_stack(workdir):
        client = MlflowClient(tr.tracking_uri())
        experiment_id, parent = _parent(client)
        stages, codes = [], load_inputs(data.inputs)
        for index, layer in enumerate(cfg.layers, 1):
            stage = pretrain_layer.fn(RunContext(parent, experiment_id, "damage", workdir), layer, codes, 0, index,
                                      f"key-{index}")
            stages.append({"run_id": stage.run_id, "trained_by": stage.trained_by, "weights": stage.weights})
            codes = stage.codes
        unrolled = unroll_finetune.fn(RunContext(parent, experiment_id, "damage", workdir), cfg, data,
                                      StackFiles(tuple(s["weights"] for s in stages), ("key-1", "key-2")))
        return client, stages + [{"run_id": unrolled.run_id, "trained_by": unrolled.trained_by, "model": unrolled.model}]

    _, trained = run_stack(tmp_path / "w1")
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)  # the same .layerwise/, another tracking store
    client, reused = run_stack(tmp_path / "w2")

    for files, before, after in zip((["pretrain-1.pt"], ["pretrain-2.pt"], ["deep-autoencoder.pt"]), trained, reused):
        assert after["trained_by"] == before["run_id"] != after["run_id"]  # reused, not retrained
        tags = client.get_run(after["run_id"]).data.tags
        assert tags["layerwise.reused"] == "true" and tags["layerwise.reused_from_store"] == tracking
        assert tags["layerwise.reused_from_run"] == before["run_id"]
        assert not {"layerwise.pretrain_run_id", "layerwise.unroll_run_id"} & set(tags)  # no link into nothing
        assert [a.path for a in client.list_artifacts(after["run_id"])] == files
        logged = client.download_artifacts(after["run_id"], files[0], str(tmp_path / after["run_id"]))
        assert open(logged, "rb").read() == open(before.get("weights") or before["model"], "rb").read()

