"""Fine-tune the pretrained stack as one deep autoencoder on reconstruction (or reuse the identical
fine-tune of an earlier run)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from prefect import task

from layerwise.cache import Store, content_key, load_file
from layerwise.checkpoint import load_stage
from layerwise.config import LayerConfig, PipelineConfig, flatten
from layerwise.device import place
from layerwise.encode import encode
from layerwise.models import DeepAutoencoder, build_autoencoder
from layerwise.paths import work_root
from layerwise.training import configure_cpu
from layerwise.unroll import unroll
from tasks import tracking
from tasks.context import RunContext
from tasks.data import DataFiles
from tasks.logs import epoch_reporter, run_logger
from tasks.pretrain import StackFiles

STAGE = "unroll"
MODEL_FILE = "deep-autoencoder.pt"
LINK_TAG = "layerwise.unroll_run_id"


def unroll_store() -> Store:
    return Store(work_root() / "unrolled", warn=run_logger().warning)


def unroll_key(cfg: PipelineConfig, stage_keys: list[str]) -> str:
    """What determines the fine-tuned network: the pretrained stack, the seed and the unroll settings."""
    return content_key({"kind": "unroll", "stack": stage_keys, "seed": cfg.seed, "unroll": cfg.unroll.model_dump()})


@dataclass
class UnrolledStage:
    """The unroll task's result: the fine-tuned network's file and codes, and its runs."""
    run_id: str
    trained_by: str  # run_id, or the earlier run whose identical fine-tune was reused
    model: str       # the stored file (state dict + resolved config)
    codes: str       # the middle codes of every split (a scratch file, for retrieval)
    test_sq_error: float
    test_sq_error_stacked: float  # the greedy stack's, before the fine-tune


@task(name="unroll", task_run_name="unroll")
def unroll_finetune(run: RunContext, cfg: PipelineConfig, data: DataFiles, stack: StackFiles) -> UnrolledStage:
    """The core's unroll of the pretrained stack (stack: its stage files and keys), reused from the
    store when an identical fine-tune was done before; tracked as the child run `unroll ...`."""
    configure_cpu()
    key = unroll_key(cfg, list(stack.keys))
    store = unroll_store()
    found = store.load(key, lambda entry: load_unrolled(str(entry.file(MODEL_FILE))))
    cached, model = found or (None, None)
    title = f"{STAGE} {'-'.join(map(str, cfg.sizes + cfg.sizes[-2::-1]))}"
    with run.child_run(title, STAGE, {"layerwise.unroll_key": key}, cached and cached.meta, LINK_TAG) as child:
        child.params({**flatten(cfg.unroll.model_dump(), "unroll"), "sizes": cfg.sizes})
        inputs = place(torch.load(data.inputs, weights_only=True), run.torch_device, log=run_logger().info)
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
            unrolled = unroll(stages, inputs, cfg.unroll, cfg.seed, epoch_reporter(child.mlf, child.id), STAGE)
            model = unrolled.model
            metrics = {"test_sq_error": unrolled.test_sq_error, "test_sq_error_stacked": unrolled.test_sq_error_stacked,
                       "train_seconds": unrolled.result.seconds}
            local = run.workdir / STAGE / MODEL_FILE
            local.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},  # loads anywhere
                        "config": cfg.model_dump()}, local)
            child.artifact(local)
            model_path = store.put(key, {MODEL_FILE: local}, {
                "run_id": child.id, "pipeline": run.pipeline, "tracking_uri": tracking.tracking_uri(),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": metrics}).file(MODEL_FILE)
            trained_by = child.id
        child.metrics(metrics, step=cfg.unroll.epochs)
        run_logger().info(f"[{STAGE}] test squared error per image {metrics['test_sq_error']:.2f} "
                          f"(the greedy stack before fine-tuning: {metrics['test_sq_error_stacked']:.2f})")
        codes = run.workdir / STAGE / "codes.pt"
        codes.parent.mkdir(parents=True, exist_ok=True)
        model = model.to(run.torch_device)
        torch.save({split: encode(model.encoders, x).cpu() for split, x in inputs.items()}, codes)
    return UnrolledStage(child.id, trained_by, str(model_path), str(codes), metrics["test_sq_error"],
                         metrics["test_sq_error_stacked"])


def load_unrolled(path: str) -> DeepAutoencoder:
    """The fine-tuned deep autoencoder a file of unroll_finetune holds."""
    saved = torch.load(path, map_location="cpu", weights_only=True)  # the config as plain dicts
    model = DeepAutoencoder([build_autoencoder(LayerConfig.model_validate(layer))
                             for layer in saved["config"]["layers"]])
    model.load_state_dict(saved["state_dict"])
    return model.eval()
