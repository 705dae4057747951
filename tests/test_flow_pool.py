"""An image folder of 100 labelled digits beside an unlabelled pool, run label-ablation-style under a
Prefect test harness: pretraining sees every image, the cells draw their labels from the 100 only."""
import json

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from flows.pipeline import layerwise_pipeline
from layerwise.datasets.examples import write_digits_folder

pytestmark = pytest.mark.slow

LAYER = {"size": 32, "activation": "sigmoid", "l1": 0.01, "epochs": 2, "optimizer": "adam", "lr": 0.003,
         "batch_size": 64}


def test_a_folder_with_an_unlabelled_pool_runs_an_ablation(prefect_harness, tracking, tmp_path):
    write_digits_folder(tmp_path / "digits", labelled=100, test=300)
    config = tmp_path / "pipelines.yaml"
    config.write_text(yaml.safe_dump({"pipelines": {"pool": {
        "data": {"source": "folder", "path": "digits", "val_size": 0},
        "layers": [LAYER],
        "finetune": {"epochs": 3, "lr": 0.1, "batch_size": 16, "keep": "last"},
        "ablation": {"labels": [20, 100], "seeds": [0], "inits": ["pretrained", "scratch"]}}}}))
    result = layerwise_pipeline("pool", config_path=str(config), data_root=str(tmp_path))
    client = MlflowClient()
    params = client.get_run(result.parent_run_id).data.params
    assert params["data.found.labelled"] == "100" and params["data.found.unlabelled"] == "1397"
    assert params["data.found.test"] == "300"
    assert [params[f"data.found.shape.{i}"] for i in range(3)] == ["1", "8", "8"]
    assert [params[f"data.found.classes.{i}"] for i in range(10)] == [str(d) for d in range(10)]
    assert params["data.source"] == "folder"

    children = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    [stage] = [r for r in children if r.data.tags["layerwise.stage"] == "pretrain-1"]
    assert stage.info.status == "FINISHED" and "val_recon_loss" not in stage.data.metrics  # no validation split
    assert stage.data.params["train_images"] == str(100 + 1397)  # pretraining: labelled and unlabelled alike
    cells = [r for r in children if r.data.tags["layerwise.stage"] == "finetune"]
    assert len(cells) == 4
    for cell in cells:
        subset = json.load(open(client.download_artifacts(cell.info.run_id, "label_subset.json", str(tmp_path))))
        assert len(subset) == int(cell.data.tags["layerwise.labels"])
        assert all(name.startswith("labelled/") for name in subset)  # never an unlabelled or test image
    summary = open(client.download_artifacts(result.parent_run_id, "summary.md", str(tmp_path))).read()
    assert f"the 300 test images of folder {tmp_path / 'digits'}." in summary and "Kingma" not in summary
    assert torch.isfinite(torch.tensor([c.data.metrics["test_error"] for c in cells])).all()
