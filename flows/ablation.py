"""Label-fraction ablation: one pretrained stack, a grid of fine-tunes fanned out through the
Prefect task runner, and a results table that answers "how much does pretraining buy?"."""
from __future__ import annotations

import os

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from layerwise.cache import content_key
from layerwise.config import AblationConfig, PipelineConfig
from layerwise import training  # the module, not its Event: a flow's globals travel to Dask workers
from tasks.finetune import finetune
from tasks.logs import run_logger
from tasks.report import summarize_ablation


def runner_for(grid: AblationConfig):
    """Threads in this process (torch releases the GIL in its kernels), or a Dask cluster."""
    if grid.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if grid.address:
            return DaskTaskRunner(address=grid.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": grid.workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=grid.workers)


def threads_per_cell(grid: AblationConfig) -> int:
    """Split the cores between concurrent cells so they do not oversubscribe the machine."""
    return grid.threads_per_worker or max(1, (os.cpu_count() or 1) // grid.workers)


def cell_key(cell: PipelineConfig, stage_keys: list[str], fingerprint: str) -> str:
    """What determines a cell's result: its stack (or architecture, from scratch), data and training."""
    ft = cell.finetune.in_force()
    stack = stage_keys if ft.init == "pretrained" else [(layer.size, layer.activation) for layer in cell.layers]
    return content_key({"kind": "cell", "stack": stack, "data": cell.data.model_dump(), "fingerprint": fingerprint,
                        "finetune": ft.model_dump(exclude={"scratch"})})


@flow(name="label-ablation", flow_run_name="{pipeline}-grid")
def label_ablation(parent_run_id: str, experiment_id: str, pipeline: str, config: dict, inputs: str, labels: str,
                   stacks: dict[str, dict], fingerprint: str) -> dict:
    """stacks: the pretrained stacks by variant name ('' without variants), as pretrain_stack gives them."""
    cfg = PipelineConfig.model_validate(config)
    grid, cells = cfg.ablation, cfg.cells()
    threads = threads_per_cell(grid)
    run_logger().info(f"{len(cells)} cells, {grid.workers} at a time with {threads} torch thread(s) each "
                      f"({grid.runner})")
    training.stop_requested.clear()
    futures = []
    for cell in cells:
        stack = stacks[cell.variant or ""] if cell.finetune.init == "pretrained" else {"weights": [], "keys": []}
        futures.append(finetune.submit(parent_run_id, experiment_id, pipeline, cell.model_dump(), inputs, labels,
                                       stack["weights"], cell.cell_name(), threads,
                                       cell_key(cell, stack["keys"], fingerprint), register_model=False))
    try:
        wait(futures)
    except BaseException:
        training.stop_requested.set()  # interrupted: the cells run in worker threads, which no signal reaches
        raise
    failed = [f for f in futures if f.state.is_failed() or f.state.is_crashed()]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cells)} cells failed; the finished ones are kept and a "
                           f"re-run only trains the rest")
    rows = []
    for cell, future in zip(cells, futures):
        result = future.result()
        rows.append({"labels": result["n_labels"], "seed": cell.finetune.seed, "init": cell.method(),
                     **{k: result[k] for k in ("test_error", "test_accuracy", "best_epoch", "train_seconds",
                                               "run_id", "trained_by")}})
    report = summarize_ablation(parent_run_id, pipeline, rows)
    reused = sum(row["run_id"] != row["trained_by"] for row in rows)
    run_logger().info(f"{len(rows)} cells done ({reused} reused from earlier runs)\n{report['markdown']}")
    return {"cells": rows, "summary": report["summary"], "markdown": report["markdown"]}
