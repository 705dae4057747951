"""Fine-tune the stacked encoders (or the same net from random init) on a labelled subset."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import torch
from prefect import task

from layerwise.checkpoint import load_encoder
from layerwise.config import MNIST_CLASSES, PipelineConfig, flatten
from layerwise.data import label_subset
from layerwise.paths import PROJECT_ROOT
from layerwise.training import accuracy, configure_cpu, train_classifier
from layerwise.transfer import classifier_from_encoders, freeze, scratch_classifier
from tasks import tracking
from tasks.logs import epoch_reporter, run_logger

STAGE = "finetune"


def build_classifier(cfg: PipelineConfig, weights: list[str]):
    ft = cfg.finetune.in_force()
    if ft.init == "scratch":
        return scratch_classifier(cfg.sizes, [layer.activation for layer in cfg.layers], MNIST_CLASSES,
                                  ft.dropout, ft.seed, ft.input_dropout)
    encoders = [freeze(load_encoder(path)[0]) for path in weights]
    return classifier_from_encoders(encoders, MNIST_CLASSES, ft.dropout, ft.seed, ft.input_dropout)


@task(name="finetune", task_run_name="finetune")
def finetune(parent_run_id: str, experiment_id: str, pipeline: str, config: dict, inputs_path: str,
             labels_path: str, weights: list[str]) -> dict:
    """Returns the run id and the test metrics; logs and registers the classifier."""
    configure_cpu()
    logger = run_logger()
    cfg = PipelineConfig.model_validate(config)
    ft = cfg.finetune.in_force()
    inputs = torch.load(inputs_path, weights_only=True)
    labels = torch.load(labels_path, weights_only=True)
    n_labels = cfg.n_labels()
    subset = label_subset(labels["train"], n_labels, ft.seed)
    mlf = tracking.client()
    run_id = tracking.start_run(
        mlf, experiment_id, f"{STAGE} {ft.init} {n_labels} labels seed {ft.seed}",
        {tracking.PIPELINE_TAG: pipeline, tracking.STAGE_TAG: STAGE, "layerwise.init": ft.init,
         "layerwise.labels": str(n_labels), "layerwise.seed": str(ft.seed)}, parent_run_id)
    with tracking.run_status(mlf, run_id):
        tracking.log_params(mlf, run_id, {**flatten(ft.model_dump(exclude={"scratch"}), "finetune"),
                                          "sizes": cfg.sizes, "n_labels": n_labels,
                                          "activations": [layer.activation for layer in cfg.layers]})
        _log_subset(mlf, run_id, labels["train_index"][subset])

        model = build_classifier(cfg, weights)
        result = train_classifier(
            model, inputs["train"][subset], labels["train"][subset], inputs["val"], labels["val"],
            epochs=ft.epochs, batch_size=ft.batch_size, optimizer=ft.optimizer, lr=ft.lr, momentum=ft.momentum,
            weight_decay=ft.weight_decay, schedule=ft.schedule, seed=ft.seed, stage=STAGE,
            callback=epoch_reporter(mlf, run_id))
        test_accuracy = accuracy(model, inputs["test"], labels["test"])
        metrics = {"test_accuracy": test_accuracy, "test_error": 100.0 * (1.0 - test_accuracy),
                   "best_epoch": float(result.best_epoch)}
        tracking.log_metrics(mlf, run_id, metrics, step=ft.epochs)
        logger.info(f"[{STAGE}] test error {metrics['test_error']:.2f}% (best validation epoch {result.best_epoch})")
        _log_model(run_id, model.eval(), f"{pipeline}-classifier", inputs["test"][:4])
    return {"run_id": run_id, "n_labels": n_labels, **metrics}


def _log_subset(mlf, run_id: str, official_index: torch.Tensor) -> None:
    """The labelled images' positions in the official 60,000, so anyone can rebuild the cell."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "label_subset.json"
        path.write_text(json.dumps(official_index.tolist()))
        mlf.log_artifact(run_id, str(path))


def _log_model(run_id: str, model: torch.nn.Module, registered_name: str, example: torch.Tensor) -> None:
    # log_model needs the fluent active run, which is per thread: bind it to this run explicitly
    with mlflow.start_run(run_id=run_id, nested=True):
        mlflow.pytorch.log_model(
            model, name="classifier", registered_model_name=registered_name,
            input_example=example.numpy(), code_paths=[str(PROJECT_ROOT / "layerwise")],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"], await_registration_for=60)
