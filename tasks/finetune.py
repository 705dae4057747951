"""Fine-tune the stacked encoders (or the same net from random init) on a labelled subset."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import mlflow
import torch
from prefect import task

from layerwise.cache import Store, load_file
from layerwise.checkpoint import load_encoder
from layerwise.config import MNIST_CLASSES, PipelineConfig, flatten
from layerwise.data import label_subset
from layerwise.paths import PROJECT_ROOT, work_root
from layerwise.finetune import Labelled
from layerwise.finetune import finetune as train
from layerwise.training import accuracy, configure_cpu
from layerwise.transfer import freeze
from tasks import tracking
from tasks.logs import epoch_reporter, run_logger
from tasks.pretrain import reuse_link

STAGE = "finetune"
CELL_LINK_TAG = "layerwise.cell_run_id"


def cell_store() -> Store:
    return Store(work_root() / "cells", warn=run_logger().warning)


def load_encoders(weights: list[str]) -> list[torch.nn.Module]:
    """The stack's frozen encoders from its stage files (a cell may run in another process)."""
    return [freeze(load_file(path, load_encoder)[0]) for path in weights]


def cell_tags(pipeline: str, cfg: PipelineConfig) -> dict[str, str]:
    ft = cfg.finetune
    tags = {tracking.PIPELINE_TAG: pipeline, tracking.STAGE_TAG: STAGE, "layerwise.init": ft.init,
            "layerwise.labels": str(cfg.n_labels()), "layerwise.seed": str(ft.seed)}
    if ft.init == "pretrained" and cfg.variant:
        tags["layerwise.variant"] = cfg.variant
    return tags


@task(name="finetune", task_run_name="finetune-{cell_name}")
def finetune(parent_run_id: str, experiment_id: str, pipeline: str, config: dict, inputs_path: str,
             labels_path: str, weights: list[str], cell_name: str = "classifier", threads: Optional[int] = None,
             cache_key: Optional[str] = None, register_model: bool = True) -> dict:
    """Returns the run id and test metrics. With a cache_key, a cell finished by an earlier run is
    reused (linked, not retrained); with register_model, the classifier is logged and registered."""
    configure_cpu(threads)
    cfg = PipelineConfig.model_validate(config)
    ft = cfg.finetune.in_force()
    n_labels = cfg.n_labels()
    mlf = tracking.client()
    store = cell_store()
    cached = store.get(cache_key) if cache_key else None  # verified: an edited metric is not trusted
    tags = cell_tags(pipeline, cfg)
    title = f"{STAGE} {cfg.method()} {n_labels} labels seed {ft.seed}"
    link_tag = CELL_LINK_TAG
    if cached:  # a cell holds no files: from another tracking store only the link changes
        link_tag, extra, _ = reuse_link(mlf, cached.meta, CELL_LINK_TAG)
        tags.update(extra)
    run_id = tracking.start_child_run(mlf, experiment_id, title, tags, parent_run_id,
                                      cached.meta["run_id"] if cached else None, link_tag)
    with tracking.run_status(mlf, run_id):
        tracking.log_params(mlf, run_id, {**flatten(ft.model_dump(exclude={"scratch"}), "finetune"),
                                          "sizes": cfg.sizes, "n_labels": n_labels,
                                          "activations": [layer.activation for layer in cfg.layers]})
        if cached:
            metrics = cached.meta["metrics"]
            run_logger().info(f"[{STAGE} {cell_name}] reused the cell finished by MLflow run {cached.meta['run_id']}")
            tracking.log_metrics(mlf, run_id, metrics, step=int(metrics["best_epoch"]))
            return {"run_id": run_id, "trained_by": cached.meta["run_id"], "n_labels": n_labels, **metrics}
        inputs = torch.load(inputs_path, weights_only=True)
        labels = torch.load(labels_path, weights_only=True)
        subset = label_subset(labels["train"], n_labels, ft.seed)
        _log_json(mlf, run_id, "label_subset.json", labels["train_index"][subset].tolist())
        labelled = Labelled(inputs["train"][subset], labels["train"][subset], inputs["val"], labels["val"])
        encoders = load_encoders(weights) if ft.init == "pretrained" else None
        tuned = train(encoders, labelled, cfg.finetune, cfg.layers, MNIST_CLASSES, f"{STAGE} {cell_name}",
                      epoch_reporter(mlf, run_id))
        model, result = tuned.model, tuned.result
        test_accuracy = accuracy(model, inputs["test"], labels["test"])
        metrics = {"test_accuracy": test_accuracy, "test_error": 100.0 * (1.0 - test_accuracy),
                   "best_epoch": float(result.best_epoch), "train_seconds": result.seconds}
        tracking.log_metrics(mlf, run_id, metrics, step=result.best_epoch)
        run_logger().info(f"[{STAGE} {cell_name}] test error {metrics['test_error']:.2f}% "
                          f"(kept epoch {result.best_epoch}, {ft.keep})")
        if register_model:
            _log_model(run_id, model.eval(), f"{pipeline}-classifier", inputs["test"][:4])
        if cache_key:
            store.put(cache_key, {}, {"run_id": run_id, "tracking_uri": tracking.tracking_uri(), "metrics": metrics})
    return {"run_id": run_id, "trained_by": run_id, "n_labels": n_labels, **metrics}


def _log_json(mlf, run_id: str, name: str, value) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(value))
        mlf.log_artifact(run_id, str(path))


def _log_model(run_id: str, model: torch.nn.Module, registered_name: str, example: torch.Tensor) -> None:
    # log_model needs the fluent active run, which is per thread: bind it to this run explicitly
    with mlflow.start_run(run_id=run_id, nested=True):
        mlflow.pytorch.log_model(
            model, name="classifier", registered_model_name=registered_name,
            input_example=example.numpy(), code_paths=[str(PROJECT_ROOT / "layerwise")],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"], await_registration_for=60)
