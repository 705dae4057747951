"""Label-fraction ablation: one pretrained stack, a grid of fine-tunes fanned out through the
Prefect task runner, and a results table that answers "how much does pretraining buy?"."""
from __future__ import annotations

import os

from prefect import flow
from prefect.futures import as_completed, wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows import interrupts
from layerwise.config import AblationConfig, PipelineConfig, cell_name, method
from layerwise.config import cells as grid_cells
from layerwise.machine.device import spread
from layerwise.train import loop as training  # the module, not its Event: a flow's globals travel to Dask workers
from tasks.context import RunContext
from tasks.data import DataFiles
from tasks.finetune import cell_key, finetune
from tasks.pretrain import StackFiles
from tasks.logs import Countdown, run_logger
from tasks.report import summarize_ablation
from tasks.results import AblationResult, CellResult


STOP_WAIT_S = 5.0


def stop_workers(futures) -> None:
    """Interrupted: the cells or trials run in worker threads, which no signal reaches; they stop at
    their next batch. Waiting for that (seconds at most) keeps a worker from finding the run's
    scratch folder already removed and failing with an unrelated FileNotFoundError."""
    training.stop_requested.set()
    wait(list(futures), timeout=STOP_WAIT_S)


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


def _report_cell(name: str, future, countdown: Countdown) -> None:
    """One line for a cell that ended: its result (or failure), the cells done / total, time left."""
    try:
        cell: CellResult = future.result()
    except Exception as exc:  # noqa: BLE001 - counted here; the grid fails after the others end
        run_logger().warning(f"[grid] cell {name} failed: {type(exc).__name__}: {exc} · {countdown.finished()}")
        return
    outcome = cell.headline() + (" (reused)" if cell.reused else "")
    run_logger().info(f"[grid] cell {name}: {outcome} · {countdown.finished(timed=not cell.reused)}")


@flow(name="label-ablation", flow_run_name="{run.pipeline}-grid", validate_parameters=False)
def label_ablation(run: RunContext, cfg: PipelineConfig, data: DataFiles, stacks: dict[str, StackFiles],
                   fingerprint: str) -> AblationResult:
    """stacks: the pretrained stacks by variant name ('' without variants), as pipeline.pretrain gives them."""
    grid, cells = cfg.ablation, grid_cells(cfg)
    threads = threads_per_cell(grid)
    run_logger().info(f"{len(cells)} cells, {grid.workers} at a time with {threads} torch thread(s) each "
                      f"({grid.runner})")
    interrupts.workers_start()
    futures = []
    devices = spread(run.torch_device, len(cells))  # several GPUs: cells round-robin over them
    for cell, device in zip(cells, devices):
        stack = stacks[cell.variant or ""] if cell.finetune.init == "pretrained" else StackFiles()
        task = finetune.with_options(task_run_name=f"finetune-{cell_name(cell)}")
        futures.append(task.submit(run.on(str(device)), cell, data, list(stack.weights), threads,
                                   cell_key(cell, list(stack.keys), fingerprint), register_model=False))
    names = {future: cell_name(cell) for future, cell in zip(futures, cells)}
    countdown = Countdown(len(cells), "cells")
    try:
        for future in as_completed(futures):  # a line per cell as it ends: how far the grid is
            _report_cell(names[future], future, countdown)
    except BaseException:
        stop_workers(futures)
        raise
    failed = [f for f in futures if f.state.is_failed() or f.state.is_crashed()]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cells)} cells failed; the finished ones are kept and a "
                           f"re-run only trains the rest")
    rows = []
    for cell, future in zip(cells, futures):
        result: CellResult = future.result()
        rows.append({"labels": result.n_labels, "seed": cell.finetune.seed, "init": method(cell),
                     "test_error": result.test_error, "test_accuracy": result.test_accuracy,
                     "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
                     "run_id": result.run_id, "trained_by": result.trained_by})
    report = summarize_ablation(run.parent_run_id, run.pipeline, rows, cfg.data)
    reused = sum(row["run_id"] != row["trained_by"] for row in rows)
    run_logger().info(f"{len(rows)} cells done ({reused} reused from earlier runs)\n{report['markdown']}")
    return AblationResult(rows, report["summary"], report["markdown"])
