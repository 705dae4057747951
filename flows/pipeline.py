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
from flows.checks import CheckedRun, check_run
from flows.deep_autoencoder import deep_autoencoder
from layerwise.config import cell_name, cells, needs_stack, stacks
from layerwise.machine.device import codes_bytes, describe_device, place, use_tf32
from layerwise.paths import DEFAULT_CONFIG, work_root
from layerwise.store.files import CODES, load_inputs, save_codes
from tasks import tracking
from tasks.analyses import retrieval
from tasks.data import prepare_data
from tasks.context import RunContext
from tasks.finetune import finetune
from tasks.logs import run_logger
from tasks.pretrain import StackFiles, pretrain_stack_tracked
from tasks.report import publish_report
from tasks.results import RunResult
from tasks.runs import open_pipeline_run, record_datasets, record_results, run_note, system_metrics


@flow(name="layerwise", flow_run_name="{pipeline}", log_prints=True, validate_parameters=False)
def layerwise_pipeline(pipeline: str, overrides: Optional[list[str]] = None, config_path: Optional[str] = None,
                       data_root: Optional[str] = None, checked: Optional[CheckedRun] = None) -> RunResult:
    """Runs pipeline NAME from pipelines.yaml (with --set style overrides) and returns its results.
    `checked`: the checks `layerwise run` already made (config, data, store); without it (a run
    started by serve) the flow makes them itself."""
    checked = checked or check_run(pipeline, config_path or DEFAULT_CONFIG, overrides or [], data_root)
    return execute(pipeline, checked)


def execute(pipeline: str, checked: CheckedRun, parent_of: Optional[str] = None,
            tags: Optional[dict[str, str]] = None, title_suffix: str = "") -> RunResult:
    """The pipeline's steps for a checked config, tracked under a new parent run (itself nested under
    parent_of when given, with extra tags and its title extended: a sweep's final run)."""
    started = time.perf_counter()
    cfg = checked.cfg
    device = torch.device(checked.device)
    use_tf32(cfg.tf32, device)
    parent = open_pipeline_run(pipeline, cfg, str(runtime.flow_run.id or ""), describe_device(device),
                               parent_of, tags, title_suffix)
    run = RunContext(parent["run_id"], parent["experiment_id"], pipeline,
                     work_root() / "runs" / f"{parent['run_id']}-{uuid.uuid4().hex[:6]}", str(device))
    try:
        with tracking.run_status(tracking.client(), run.parent_run_id), system_metrics(run.parent_run_id,
                                                                                        cfg.system_metrics):
            data = prepare_data(checked.data_root, cfg.data, str(run.workdir))
            record_datasets(run.parent_run_id, data)
            built, codes = {}, {}  # stacks by variant name ('' without variants); codes: files retrieval searches
            if needs_stack(cfg):
                # on the device once, not per batch, when the pixels and the codes fit there
                inputs = load_inputs(data.inputs)
                inputs = place(inputs, device, codes_bytes(sum(map(len, inputs.values())), cfg.sizes[1:]),
                               log=run_logger().info)
                for stack_cfg in stacks(cfg):
                    name = stack_cfg.variant or ""
                    built[name], top = pretrain_stack_tracked(stack_cfg, run, inputs, checked.fingerprint)
                    if cfg.retrieval:
                        codes[name] = save_codes(run.workdir / name / CODES, top)
                del inputs, top
            if cfg.unroll:
                outcome = deep_autoencoder(run, cfg, data, built[""])
                codes = {"unrolled": outcome.codes}
            elif cfg.ablation:
                ablation = label_ablation.with_options(task_runner=runner_for(cfg.ablation))
                outcome = ablation(run, cfg, data, built, checked.fingerprint)
            else:
                (cell,) = cells(cfg)  # its fine-tune settings in force
                outcome = finetune.with_options(task_run_name=f"finetune-{cell_name(cell)}")(
                    run, cell, data, built.get("", StackFiles()).weights)
            result = RunResult(pipeline, run.parent_run_id, run.experiment_id, outcome)
            if cfg.retrieval:
                result.retrieval = {space: retrieval(run, cfg.retrieval, data, str(path), space or "stack")
                                    for space, path in codes.items()}
            result.wall_seconds = time.perf_counter() - started
            record_results(run.parent_run_id, {**outcome.parent_metrics(), "wall_seconds": result.wall_seconds},
                           run_note(pipeline, cfg, outcome, result.wall_seconds))
            publish_report(run.parent_run_id, pipeline)  # report.md on the run, a markdown artifact in Prefect
    finally:
        shutil.rmtree(run.workdir, ignore_errors=True)  # codes are per-run scratch; weights are in MLflow
    return result
