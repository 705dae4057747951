"""The layer-wise pipeline: pretrain each layer of the stack greedily, then fine-tune the classifier
(or, for a pipeline with an `ablation:` block, a grid of classifiers over the same stack; with
`unroll:`, the stack as one deep autoencoder against PCA), then retrieval in the codes if asked."""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

from prefect import flow, runtime

from flows.ablation import label_ablation, runner_for
from flows.deep_autoencoder import deep_autoencoder
from layerwise.cache import stage_key
from layerwise.config import PipelineConfig, load_pipeline
from layerwise.data import ensure_mnist
from layerwise.memory import check_fits
from layerwise.paths import DEFAULT_CONFIG, data_root, work_root
from tasks import tracking
from tasks.data import prepare_data
from tasks.analyses import retrieval
from tasks.finetune import finetune
from tasks.pretrain import pretrain_layer
from tasks.runs import open_pipeline_run, record_results


def pretrain_stack(cfg: PipelineConfig, run_id: str, experiment_id: str, pipeline: str, inputs: str,
                   fingerprint: str, workdir: Path) -> dict:
    """One loop over `layers:`: each stage trains on the codes of the one below. Returns the
    weights files, the stage keys (what the stack's cells are keyed by) and the top codes file."""
    codes, weights, keys = inputs, [], []
    folder = workdir / cfg.variant if cfg.variant else workdir
    for index, layer in enumerate(cfg.layers, start=1):
        key = stage_key(cfg.pretrain_dict(), index, fingerprint)
        stage = pretrain_layer.with_options(task_run_name=f"pretrain-{cfg.variant}-{index}" if cfg.variant
                                            else f"pretrain-{index}")(
            run_id, experiment_id, pipeline, index, layer.model_dump(), cfg.seed, codes, str(folder), key)
        codes = stage["codes"]
        weights.append(stage["weights"])
        keys.append(key)
    return {"weights": weights, "keys": keys, "codes": codes}


def needs_stack(cfg: PipelineConfig) -> bool:
    return cfg.unroll is not None or any(cell.finetune.init == "pretrained" for cell in cfg.cells())


RESULT_METRICS = ("test_accuracy", "test_error", "test_sq_error", "test_sq_error_stacked", "pca_test_sq_error",
                  "wall_seconds")


@flow(name="layerwise", flow_run_name="{pipeline}", log_prints=True)
def layerwise_pipeline(pipeline: str, overrides: Optional[list[str]] = None, config_path: Optional[str] = None,
                       mnist_root: Optional[str] = None) -> dict:
    """Runs pipeline NAME from pipelines.yaml (with --set style overrides) and returns its results."""
    started = time.perf_counter()
    cfg = load_pipeline(pipeline, config_path or DEFAULT_CONFIG, overrides or [])
    check_fits(cfg, pipeline=pipeline, source=str(config_path or DEFAULT_CONFIG))  # scheduled runs too
    root = data_root(mnist_root)
    fingerprint = ensure_mnist(root, allow_download=mnist_root is None)
    tracking.check_store()
    parent = open_pipeline_run(pipeline, cfg.model_dump(), str(runtime.flow_run.id or ""))
    run_id, experiment_id = parent["run_id"], parent["experiment_id"]
    workdir = work_root() / "runs" / f"{run_id}-{uuid.uuid4().hex[:6]}"
    mlf = tracking.client()
    try:
        with tracking.run_status(mlf, run_id):
            data = prepare_data(str(root), cfg.data.model_dump(), str(workdir))
            stacks = {}
            if needs_stack(cfg):
                stacks = {stack.variant or "": pretrain_stack(stack, run_id, experiment_id, pipeline, data["inputs"],
                                                              fingerprint, workdir) for stack in cfg.stacks()}
            codes = {name: stack["codes"] for name, stack in stacks.items()}
            if cfg.unroll:
                result = deep_autoencoder(run_id, experiment_id, pipeline, cfg.model_dump(), data["inputs"],
                                          data["labels"], stacks[""], str(workdir))
                codes = {"unrolled": result.pop("codes")}
            elif cfg.ablation:
                ablation = label_ablation.with_options(task_runner=runner_for(cfg.ablation))
                result = ablation(run_id, experiment_id, pipeline, cfg.model_dump(), data["inputs"],
                                  data["labels"], stacks, fingerprint)
            else:
                result = finetune(run_id, experiment_id, pipeline, cfg.model_dump(), data["inputs"],
                                  data["labels"], stacks.get("", {}).get("weights", []), cfg.cell_name())
            if cfg.retrieval:
                result["retrieval"] = {space: retrieval(run_id, experiment_id, pipeline, cfg.retrieval.model_dump(),
                                                        data["inputs"], data["labels"], path, space or "stack",
                                                        str(workdir))
                                       for space, path in codes.items()}
            result["wall_seconds"] = time.perf_counter() - started
            record_results(run_id, {k: v for k, v in result.items() if k in RESULT_METRICS})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # codes are per-run scratch; weights are in MLflow
    return {"pipeline": pipeline, "parent_run_id": run_id, "experiment_id": experiment_id, **result}
