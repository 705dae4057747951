"""Fine-tune the pretrained stack as one deep autoencoder on reconstruction (or reuse the identical
fine-tune of an earlier run)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from prefect import task

from layerwise.config import PipelineConfig, flatten
from layerwise.machine.cpu import configure_cpu
from layerwise.machine.device import place
from layerwise.paths import work_root
from layerwise.store.cache import Store, content_key, load_file
from layerwise.store.checkpoint import load_stage, load_unrolled, save_unrolled
from layerwise.store.files import CODES, SPLITS, load_inputs, save_codes
from layerwise.train.evaluate import encode
from layerwise.train.unroll import unroll
from tasks import tracking
from tasks.context import RunContext, Trial, prunable
from tasks.data import DataFiles
from tasks.logs import epoch_progress, run_logger, then
from tasks.pretrain import StackFiles

STAGE = "unroll"
MODEL_FILE = "deep-autoencoder.pt"
LINK_TAG = "layerwise.unroll_run_id"


def unroll_store() -> Store:
    return Store(work_root() / "unrolled", warn=run_logger().warning)


def unroll_key(cfg: PipelineConfig, stage_keys: list[str], kind: str = "unroll") -> str:
    """What determines the fine-tuned network: the pretrained stack, the seed and the unroll settings.
    kind 'unroll-trial': a sweep trial's (stored apart: its entry holds validation metrics only)."""
    return content_key({"kind": kind, "stack": stage_keys, "seed": cfg.seed, "unroll": cfg.unroll.model_dump(exclude={"compile"})})


@dataclass
class UnrolledStage:
    """The unroll task's result: the fine-tuned network's file and codes, and its runs."""
    run_id: str
    trained_by: str  # run_id, or the earlier run whose identical fine-tune was reused
    model: str       # the stored file (state dict + resolved config)
    codes: Optional[str]  # the middle codes of every split (a scratch file, for retrieval); None in a trial
    test_sq_error: Optional[float]  # None: a sweep's trial, which never reads the test split
    test_sq_error_stacked: Optional[float]  # the greedy stack's, before the fine-tune
    val_sq_error: Optional[float] = None  # after the last epoch


@task(name="unroll", task_run_name="unroll")
@prunable
def unroll_finetune(run: RunContext, cfg: PipelineConfig, data: DataFiles, stack: StackFiles,
                    trial: Optional[Trial] = None) -> UnrolledStage:
    """The core's unroll of the pretrained stack (stack: its stage files and keys), reused from the
    store when an identical fine-tune was done before; tracked as the child run `unroll ...`.
    In a sweep's trial (tasks.context.Trial) the test split is not read and no codes are written;
    a trial the pruner stops returns a PrunedTrial (its run ends KILLED)."""
    configure_cpu()
    key = unroll_key(cfg, list(stack.keys), "unroll-trial" if trial else "unroll")
    store = unroll_store()
    found = store.load(key, lambda entry: load_unrolled(str(entry.file(MODEL_FILE))))
    cached, model = found or (None, None)
    title = f"{STAGE} {'-'.join(map(str, cfg.sizes + cfg.sizes[-2::-1]))}"
    with run.child_run(title, STAGE, {"layerwise.unroll_key": key}, cached and cached.meta, LINK_TAG) as child:
        child.params({**flatten(cfg.unroll.model_dump(), "unroll"), "sizes": cfg.sizes})
        # a trial never reads the test split
        inputs = place(load_inputs(data.inputs, ("train", "val") if trial else SPLITS), run.torch_device,
                       log=run_logger().info)
        if cached:
            metrics, trained_by = cached.meta["metrics"], cached.meta["run_id"]
            run_logger().info(f"[{STAGE}] reused: identical fine-tune by MLflow run {trained_by} (key {key})")
            model_path = cached.file(MODEL_FILE)
            if child.foreign:
                child.artifact(model_path)
                run_logger().info(f"[{STAGE}] run {trained_by} is not in this tracking store (it was tracked in "
                                  f"{cached.meta.get('tracking_uri')}): its model is logged to this run")
        else:
            stages = [load_file(path, load_stage)[0].to(run.torch_device) for path in stack.weights]
            with epoch_progress(child.mlf, child.id) as progress:  # a pruned trial raises Pruned here
                unrolled = unroll(stages, inputs, cfg.unroll, cfg.seed, then(progress, trial and trial.on_epoch),
                                  STAGE)
            model = unrolled.model
            metrics = {"test_sq_error": unrolled.test_sq_error, "test_sq_error_stacked": unrolled.test_sq_error_stacked,
                       "val_sq_error": unrolled.result.history[-1].metrics.get("val_sq_error"),
                       "train_seconds": unrolled.result.seconds}
            metrics = {name: value for name, value in metrics.items() if value is not None}
            local = save_unrolled(run.workdir / STAGE / MODEL_FILE, model, cfg.model_dump())
            child.artifact(local)
            model_path = store.put(key, {MODEL_FILE: local}, {
                "run_id": child.id, "pipeline": run.pipeline, "tracking_uri": tracking.tracking_uri(),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": metrics}).file(MODEL_FILE)
            trained_by = child.id
        # a fresh fine-tune logged val_sq_error per epoch already; a reused one has only the stored value
        child.metrics({k: v for k, v in metrics.items() if cached or k != "val_sq_error"}, step=cfg.unroll.epochs)
        if trial:
            run_logger().info(f"[{STAGE}] validation squared error per image {metrics.get('val_sq_error', float('nan')):.2f}")
            return UnrolledStage(child.id, trained_by, str(model_path), None, None, None, metrics.get("val_sq_error"))
        run_logger().info(f"[{STAGE}] test squared error per image {metrics['test_sq_error']:.2f} "
                          f"(the greedy stack before fine-tuning: {metrics['test_sq_error_stacked']:.2f})")
        model = model.to(run.torch_device)
        codes = save_codes(run.workdir / STAGE / CODES, {split: encode(model.encoders, x) for split, x in inputs.items()})
    return UnrolledStage(child.id, trained_by, str(model_path), str(codes), metrics["test_sq_error"],
                         metrics["test_sq_error_stacked"], metrics.get("val_sq_error"))

