"""Fine-tune the stacked encoders (or the same net from random init) on a labelled subset."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import mlflow
import torch
from prefect import task

from layerwise.config import PipelineConfig, cell_name, flatten, method
from layerwise.datasets import to_unit
from layerwise.machine.cpu import configure_cpu
from layerwise.nn.transfer import freeze
from layerwise.paths import PROJECT_ROOT, work_root
from layerwise.store.cache import Store, content_key, load_file
from layerwise.store.checkpoint import load_encoder, load_stage
from layerwise.store.files import SPLITS, load_inputs, load_labels
from layerwise.train.evaluate import accuracy
from layerwise.train.finetune import Labelled
from layerwise.train.finetune import finetune as train
from tasks import tracking
from tasks.context import ChildRun, RunContext, Trial, prunable
from tasks.data import DataFiles
from tasks.datasets import log_datasets, split
from tasks.logs import epoch_progress, run_logger, then
from tasks.registry import VAL_TAG, describe_version, promote_if_better
from tasks.results import CellResult

STAGE = "finetune"
CELL_LINK_TAG = "layerwise.cell_run_id"


def cell_store() -> Store:
    return Store(work_root() / "cells", warn=run_logger().warning)


def cell_key(cell: PipelineConfig, stage_keys: list[str], fingerprint: str, kind: str = "cell") -> str:
    """What determines a cell's result: its stack (or architecture, from scratch), data and training.
    kind 'trial-cell': a sweep trial's (stored apart: its entry holds validation metrics only)."""
    ft = cell.finetune
    stack = stage_keys if ft.init == "pretrained" else [(layer.size, layer.activation) for layer in cell.layers]
    return content_key({"kind": kind, "stack": stack, "data": cell.data.model_dump(), "fingerprint": fingerprint,
                        "finetune": ft.model_dump(exclude={"scratch"})})


def load_encoders(weights: list[str]) -> list[torch.nn.Module]:
    """The stack's frozen encoders from its stage files (a cell may run in another process)."""
    return [freeze(load_file(path, load_encoder)[0]) for path in weights]


def load_stages(weights: list[str]) -> list[torch.nn.Module]:
    """The stack's whole autoencoders, frozen (what finetune.unlabelled reconstruction keeps)."""
    return [freeze(load_file(path, load_stage)[0]) for path in weights]


def cell_tags(cfg: PipelineConfig) -> dict[str, str]:
    ft = cfg.finetune
    tags = {"layerwise.init": ft.init, "layerwise.labels": str(cfg.n_labels()), "layerwise.seed": str(ft.seed),
            "layerwise.method": method(cfg)}
    if ft.unlabelled is not None:
        tags["layerwise.unlabelled"] = ft.unlabelled.objective
    if ft.init == "pretrained" and cfg.variant:
        tags["layerwise.variant"] = cfg.variant
    return tags


@task(name="finetune")
@prunable
def finetune(run: RunContext, cfg: PipelineConfig, data: DataFiles, weights: list[str],
             threads: Optional[int] = None, cache_key: Optional[str] = None, register_model: bool = True,
             trial: Optional[Trial] = None) -> CellResult:
    """The core's fine-tune of cfg's cell (the stage files' encoders, or the same net from scratch)
    on its labelled subset, tracked as a child run. With a cache_key, a cell finished by an earlier
    run is reused (linked, not retrained); with register_model, the classifier is logged and
    registered as PIPELINE-classifier. In a sweep's trial (tasks.context.Trial) the test split is
    not read, nothing is registered, and the cell reports its kept epoch's validation accuracy only;
    a trial the pruner stops returns a PrunedTrial (its run ends KILLED)."""
    configure_cpu(threads)
    ft = cfg.finetune  # a cell's: its settings in force (layerwise.config.cells)
    n_labels, name = cfg.n_labels(), f"{STAGE} {cell_name(cfg)}"
    store = cell_store()
    cached = store.get(cache_key) if cache_key else None  # verified: an edited metric is not trusted
    title = f"{STAGE} {method(cfg)} {n_labels} labels seed {ft.seed}"
    # a cell holds no files: reused from another tracking store, only its link changes
    with run.child_run(title, STAGE, cell_tags(cfg), cached and cached.meta, CELL_LINK_TAG) as child:
        child.params({**flatten(ft.model_dump(exclude={"scratch"}), "finetune"), "sizes": cfg.sizes,
                      "n_labels": n_labels, "activations": [layer.activation for layer in cfg.layers]})
        if cached:
            metrics = cached.meta["metrics"]
            run_logger().info(f"[{name}] reused the cell finished by MLflow run {cached.meta['run_id']}")
            child.metrics(metrics)
            return CellResult(child.id, cached.meta["run_id"], n_labels, **metrics)
        inputs, labels = load_inputs(data.inputs, ("train", "val") if trial else SPLITS), load_labels(data.labels)
        device = run.torch_device  # only what the cell trains on goes there
        # the images by their identity in the source: an index, or a path relative to the folder
        subset, chosen = labels.subset(n_labels, ft.seed)
        _log_json(child, "label_subset.json", chosen)
        log_datasets(child.mlf, child.id, data.source_uri,
                     [split("labelled subset", data.dataset, data.fingerprint, chosen)]
                     + data.datasets("validation", *(() if trial else ("test",))))
        labelled = Labelled(*(t.to(device) for t in (inputs["train"][subset], labels.train[subset],
                                                      inputs["val"], labels.val)))
        if ft.unlabelled is not None:  # every training image whose label this cell does not have
            others = torch.ones(len(inputs["train"]), dtype=torch.bool)
            others[subset] = False
            labelled.x_unlabelled = inputs["train"][others]  # batches go to the device as they are drawn
        keeps_decoders = ft.unlabelled is not None and ft.unlabelled.objective == "reconstruction"
        encoders = ([m.to(device) for m in (load_stages(weights) if keeps_decoders else load_encoders(weights))]
                    if ft.init == "pretrained" else None)
        with epoch_progress(child.mlf, child.id) as progress:  # a pruned trial raises Pruned here
            tuned = train(encoders, labelled, cfg.finetune, cfg.layers, cfg.data.n_classes, name,
                          then(progress, trial and trial.on_epoch))
        model, result = tuned.model, tuned.result
        kept_val = next((r.metrics.get("val_accuracy") for r in result.history if r.epoch == result.best_epoch), None)
        test_accuracy = None if trial else accuracy(model, inputs["test"].to(device), labels.test,
                                                        ft.precision)
        cell = CellResult(child.id, child.id, n_labels, float(result.best_epoch), result.seconds, test_accuracy,
                          None if test_accuracy is None else 100.0 * (1.0 - test_accuracy), kept_val)
        # at step 0: one value per cell (the kept epoch is best_epoch), which the UI draws as bars that
        # compare across cells whatever epoch each kept
        child.metrics(cell.metrics())
        run_logger().info(f"[{name}] {cell.headline()} (kept epoch {result.best_epoch}, {ft.keep})")
        if register_model and not trial and (ft.init == "pretrained" or cfg.register_scratch):
            # logged from the CPU: a model trained on a GPU loads and predicts on any machine
            registered = f"{run.pipeline}-classifier"
            version = _log_model(child.id, model.cpu().eval(), registered, to_unit(inputs["test"][:4]))
            describe_version(child.mlf, registered, version, {
                "pipeline": run.pipeline, "labels": n_labels, "init": method(cfg), "seed": ft.seed,
                VAL_TAG: cell.kept_val_accuracy, "test_error": cell.test_error, "run_id": child.id})
            promote_if_better(child.mlf, registered, version, cell.kept_val_accuracy)
        if cache_key:
            store.put(cache_key, {}, {"run_id": child.id, "tracking_uri": tracking.tracking_uri(),
                                      "metrics": cell.metrics()})
    return cell


def _log_json(child: ChildRun, name: str, value) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(value))
        child.artifact(path)


def prepare_model_logging() -> None:
    """Does ahead what the first log_model does anyway: import MLflow's PyTorch flavour, and map the
    installed packages to their modules (MLflow checks the model's pip requirements against that map,
    built once per process by scanning every installed distribution: ~1 s of log_model's ~1.8 s).
    `layerwise run` calls it while the temporary Prefect API starts, when a core would sit idle. The
    map is MLflow's own (private) cache: if MLflow renames it, log_model simply builds it itself."""
    import mlflow.pytorch  # noqa: F401
    from mlflow.utils import requirements_utils

    build_map = getattr(requirements_utils, "_init_packages_to_modules_map", None)
    if callable(build_map):
        build_map()


def _log_model(run_id: str, model: torch.nn.Module, registered_name: str, example: torch.Tensor) -> str:
    """Logs the classifier to run_id and registers it; returns the new version."""
    # log_model needs the fluent active run, which is per thread: bind it to this run explicitly
    with tracking.store_calls_held(), mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.pytorch.log_model(
            model, name="classifier", registered_model_name=registered_name,
            input_example=example.numpy(), code_paths=[str(PROJECT_ROOT / "layerwise")],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"], await_registration_for=60)
    return str(info.registered_model_version)
