"""The layer-wise pipeline: pretrain each layer of the stack greedily, then fine-tune the classifier
(or, for a pipeline with an `ablation:` block, a grid of classifiers over the same stack; with
`unroll:`, the stack as one deep autoencoder against PCA), then retrieval in the codes if asked."""
from __future__ import annotations

import shutil
import time
import uuid
from typing import Optional

import torch
from prefect import flow, runtime

from flows.ablation import label_ablation, runner_for
from flows.deep_autoencoder import deep_autoencoder
from layerwise.cache import stage_key
from layerwise.config import PipelineConfig, load_pipeline
from layerwise.data import ensure_mnist
from layerwise.memory import check_fits
from layerwise.paths import DEFAULT_CONFIG, data_root, work_root
from layerwise.stack import Splits, pretrain_stack
from tasks import tracking
from tasks.data import prepare_data
from tasks.analyses import retrieval
from tasks.context import RunContext
from tasks.finetune import finetune
from tasks.pretrain import pretrain_layer
from tasks.runs import open_pipeline_run, record_results


def pretrain(cfg: PipelineConfig, run: RunContext, inputs: Splits, fingerprint: str) -> tuple[dict, Splits]:
    """The core's greedy loop, each stage a task (stored stages reused, each tracked as a child run).
    Returns the stack as the later flows take it (weights files, and the stage keys its cells are
    keyed by) and the top layer's codes."""
    prefix = f"pretrain-{cfg.variant}" if cfg.variant else "pretrain"
    folder = run.workdir / cfg.variant if cfg.variant else run.workdir
    stage_run = RunContext(run.parent_run_id, run.experiment_id, run.pipeline, folder)

    def stage(layer, codes, seed, index, callback):
        key = stage_key(cfg.pretrain_dict(), index, fingerprint)
        return pretrain_layer.with_options(task_run_name=f"{prefix}-{index}")(stage_run, layer, codes, seed, index,
                                                                             key)

    stack = pretrain_stack(cfg.layers, inputs, cfg.seed, stage=stage, keep_codes=False)
    return {"weights": [s.weights for s in stack.stages], "keys": [s.key for s in stack.stages]}, stack.codes


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
    run = RunContext(run_id, experiment_id, pipeline, workdir)
    mlf = tracking.client()
    try:
        with tracking.run_status(mlf, run_id):
            data = prepare_data(str(root), cfg.data.model_dump(), str(workdir))
            stacks, codes = {}, {}  # by variant name ('' without variants); codes: files retrieval searches
            if needs_stack(cfg):
                inputs = torch.load(data["inputs"], weights_only=True)
                for stack_cfg in cfg.stacks():
                    name = stack_cfg.variant or ""
                    stacks[name], top = pretrain(stack_cfg, run, inputs, fingerprint)
                    if cfg.retrieval:
                        codes[name] = workdir / name / "codes.pt"
                        codes[name].parent.mkdir(parents=True, exist_ok=True)
                        torch.save(top, codes[name])
                del inputs, top
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
                                                        data["inputs"], data["labels"], str(path), space or "stack",
                                                        str(workdir))
                                       for space, path in codes.items()}
            result["wall_seconds"] = time.perf_counter() - started
            record_results(run_id, {k: v for k, v in result.items() if k in RESULT_METRICS})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # codes are per-run scratch; weights are in MLflow
    return {"pipeline": pipeline, "parent_run_id": run_id, "experiment_id": experiment_id, **result}
