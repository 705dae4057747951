"""What the MLflow UI shows of a run (issue 16): runs named for what they are, a description on each
parent, the splits as dataset inputs whose digest follows the data, system metrics on the parent,
and the registry's `champion` alias, moved only by a better validation accuracy."""
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from layerwise.config import load_pipeline

pytestmark = pytest.mark.slow  # MLflow stores, a flow, registered models


def test_each_kind_of_run_is_named_for_what_it_is():
    from tasks.runs import run_title

    assert run_title("conv", load_pipeline("conv")) == \
        "conv · grid 100/1000 labels × 3 seed(s) × pretrained/scratch (12 fine-tunes)"
    assert run_title("variant-ablation", load_pipeline("variant-ablation")).startswith(
        "variant-ablation · variant grid 100/1000 labels × 3 seed(s) × sparse/denoising/contractive/scratch")
    assert run_title("quickstart", load_pipeline("quickstart")) == \
        "quickstart · 784-1000-1000-500 · pretrained · all labels · seed 0"
    assert run_title("deep-ae", load_pipeline("deep-ae")) == \
        "deep-ae · deep autoencoder 784-1000-500-250-30 · seed 0 · retrieval k=10"
    assert "pretrained+pseudo_label" in run_title("smoke", load_pipeline(
        "smoke", overrides=["finetune.unlabelled={objective: pseudo_label}"]))


def test_the_splits_digest_changes_when_the_data_does(tmp_path, tracking):
    from layerwise.config import DataConfig
    from tasks.data import prepare_data
    from tasks.datasets import log_datasets

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (120, 8, 8), dtype=np.uint8), np.arange(120) % 3
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y)
    x[0, 0, 0] ^= 1  # one pixel of one image
    np.savez(tmp_path / "b.npz", x_train=x, y_train=y)
    files = {name: prepare_data.fn(str(tmp_path), DataConfig(source="arrays", path=str(tmp_path / f"{name}.npz"),
                                                             val_size=0.2), str(tmp_path / name)) for name in "ab"}
    digests = {name: {s.context: s.digest for s in f.splits} for name, f in files.items()}
    assert set(digests["a"]) == {"training", "validation", "test"}
    assert all(digests["a"][c] != digests["b"][c] for c in digests["a"])  # other pixels: other datasets
    again = prepare_data.fn(str(tmp_path), DataConfig(source="arrays", path=str(tmp_path / "a.npz"), val_size=0.2),
                            str(tmp_path / "a2"))
    assert {s.context: s.digest for s in again.splits} == digests["a"]  # the same data: the same digest

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("datasets")).info.run_id
    log_datasets(client, run_id, files["a"].source_uri, files["a"].splits)
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert {(i.dataset.name, i.dataset.digest, i.tags[0].value) for i in inputs} == \
        {(s.name, s.digest, s.context) for s in files["a"].splits}
    assert all(str(tmp_path / "a.npz") in i.dataset.source for i in inputs)


def test_system_metrics_are_sampled_onto_the_run(tracking):
    import time

    from tasks.runs import live_system_metrics, system_metrics

    client = MlflowClient()
    experiment = client.create_experiment("system")
    run_id = client.create_run(experiment).info.run_id
    with system_metrics(run_id, every=0.2):
        time.sleep(1.5)
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 4 and "system/system_memory_usage_megabytes" in client.get_run(run_id).data.metrics
    # a run shorter than the interval: a sample at its start and one at its end, both written when it
    # ends (a sqlite store: nothing is written beside the run's own writes while it runs)
    assert not live_system_metrics()
    short = client.create_run(experiment).info.run_id
    with system_metrics(short, every=10):
        time.sleep(0.5)
        assert not client.get_run(short).data.metrics
    history = client.get_metric_history(short, "system/cpu_utilization_percentage")
    assert [m.step for m in history] == [0, 1] and history[1].timestamp - history[0].timestamp >= 400
    off = client.create_run(experiment).info.run_id
    with system_metrics(off, every=0):
        time.sleep(0.3)
    assert not client.get_run(off).data.metrics


def test_champion_moves_only_when_validation_accuracy_improves(tracking):
    import mlflow

    from tasks.finetune import _log_model
    from tasks.registry import VAL_TAG, champion, describe_version, promote_if_better

    client = MlflowClient()
    experiment = client.create_experiment("registry")
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    champions = []
    for val_accuracy, test_error in ((0.5, 9.0), (0.4, 1.0), (0.7, 5.0), (None, 0.5)):
        model = torch.nn.Sequential(torch.nn.Linear(6, 3))
        run_id = client.create_run(experiment).info.run_id
        version = _log_model(run_id, model.eval(), "toy-classifier", x)
        describe_version(client, "toy-classifier", version, {VAL_TAG: val_accuracy, "test_error": test_error})
        promote_if_better(client, "toy-classifier", version, val_accuracy)
        champions.append(str(champion(client, "toy-classifier").version))
    # v2 has the best test error but a worse validation accuracy: the alias never looks at test
    assert champions == ["1", "1", "3", "3"]
    loaded = mlflow.pytorch.load_model("models:/toy-classifier@champion", map_location="cpu")
    assert loaded(x).shape == (4, 3)


def test_a_run_records_its_note_datasets_system_metrics_and_registers_only_pretrained(prefect_harness, tracking):
    from flows.pipeline import layerwise_pipeline

    scratch = layerwise_pipeline("smoke", ["finetune.init=scratch", "system_metrics=0.5"], data_root=str(mnist_root()))
    client = MlflowClient()
    assert not client.search_registered_models()  # a scratch control is not registered unless asked
    result = layerwise_pipeline("smoke", ["system_metrics=0.5"], data_root=str(mnist_root()))
    parent = client.get_run(result.parent_run_id)
    assert parent.info.run_name == "smoke · 784-1000-1000-500 · pretrained · 200 labels · seed 0"
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**smoke**") and f"test error {result.outcome.test_error:.2f}%" in note
    assert {i.tags[0].value for i in parent.inputs.dataset_inputs} == {"training", "validation", "test"}
    assert any(k.startswith("system/") for k in parent.data.metrics)
    version = client.get_model_version_by_alias("smoke-classifier", "champion")
    assert version.tags["init"] == "pretrained" and version.tags["labels"] == "200"
    assert float(version.tags["test_error"]) == pytest.approx(result.outcome.test_error)
    assert float(version.tags["val_accuracy"]) == pytest.approx(result.outcome.kept_val_accuracy)
    assert scratch.parent_run_id != result.parent_run_id
